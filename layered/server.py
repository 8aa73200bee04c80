"""The Prefect API runs report to, found or started so that a fresh offline machine works.

Without ``PREFECT_API_URL``, Prefect would start a temporary API server in every Dask worker
process (about 6 s each, one SQLite file). Instead, in order of preference:

1. ``PREFECT_API_URL`` if it is set (it must answer);
2. a server started earlier with ``layered server start`` (recorded in
   ``<prefect_home>/layered-server.json``), kept up between runs;
3. a ``prefect server start`` on 127.0.0.1 and a free port, started for this run and
   stopped after it (a new database takes 15-20 s to start, an existing one 5-8 s). On
   Linux it is also tied to the process that started it (``PR_SET_PDEATHSIG``): if that
   process is killed (SIGKILL, out of memory), the kernel stops the server too, so no
   orphaned server is left behind by a run that died.

The server's ``PREFECT_HOME`` is ``Settings.prefect_home`` (under the user's data
directory), with telemetry off (``DO_NOT_TRACK=1``, analytics disabled). Once a server
started here has migrated that database, later servers of the same Prefect version skip
the migrations (``PREFECT_SERVER_DATABASE_MIGRATE_ON_START=false``, see
:func:`database_current`), and a server started for one run leaves off the services that
serve deployments and long-lived servers (:data:`RUN_IDLE_SERVICES`), never the task run
recorder. Every server started here records task runs in batches (:data:`RECORDER_BATCHES`).

Examples
--------
>>> api_url(4200)
'http://127.0.0.1:4200/api'
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layered.settings import Settings

__all__ = [
    "ApiServer",
    "ServerStartError",
    "api_url",
    "healthy",
    "prefect_api",
    "start_background",
    "stop_background",
    "running_server",
    "wait_ready",
    "database_current",
    "SERVER_FILE",
]

SERVER_FILE = "layered-server.json"
#: Written once a server started here has migrated its database: the Prefect version and
#: the database file, so that later servers of that version skip the migrations.
DATABASE_FILE = "layered-database.json"
QUIET_ENV = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
#: Services a server started for one run leaves off: scheduling, late and lost runs,
#: automations and clean-ups serve deployments and long-lived servers. The task run
#: recorder (task runs reach the UI as events) and the event persister stay on.
RUN_IDLE_SERVICES = (
    "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS",
    "REPOSSESSOR", "DB_VACUUM", "CLEANUP_RECONCILER", "TRIGGERS", "EVENT_LOGGER",
)


#: The task run recorder builds task runs from their events and, by Prefect's default,
#: writes each event alone: about 20 ms of the server's CPU per task run, taken from the
#: Dask workers on a small machine while a run layers. Written in batches, at least once a
#: second (the UI shows a task run's state up to a second later), it costs about 7 ms. A
#: full batch is written at once, so a server that stops has at most one left to write,
#: which it does as it stops.
RECORDER_BATCHES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


class ServerStartError(RuntimeError):
    """The Prefect server did not come up (or an API URL does not answer)."""


@dataclass(frozen=True)
class ApiServer:
    """A Prefect API: its URL, and the process group to stop if this package started it.

    Attributes
    ----------
    url : str
        ``http://HOST:PORT/api``.
    source : str
        ``"PREFECT_API_URL"``, ``"layered server"`` or ``"started for this run"``.
    pid : int or None
        Leader of the server's process group, when started here.
    home : Path or None
        The server's ``PREFECT_HOME`` (its ``server.log``), when started here.
    """

    url: str
    source: str
    pid: int | None = None
    home: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")


def api_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/api"


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Does ``<url>/health`` answer?"""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(home: Path, port: int, for_run: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
    # The bundled UI calls the API at PREFECT_SERVER_UI_API_URL, which otherwise names the
    # default port 4200 whatever port the server listens on.
    env.update(QUIET_ENV, PREFECT_HOME=str(home), PREFECT_SERVER_UI_API_URL=api_url(port))
    if database_current(home):
        env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
    for name, value in RECORDER_BATCHES.items():
        env.setdefault(name, value)
    if for_run:
        for name in RUN_IDLE_SERVICES:
            env.setdefault(f"PREFECT_SERVER_SERVICES_{name}_ENABLED", "false")
    return env


def _database_stamp(home: Path) -> dict[str, Any] | None:
    """The installed Prefect version and the identity of the server's SQLite file; None
    when the server uses another database (it is then migrated as Prefect does)."""
    if os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
            "PREFECT_API_DATABASE_CONNECTION_URL"):
        return None
    database = home / "prefect.db"
    try:
        info = database.stat()
    except OSError:
        return None
    return {"prefect": importlib.metadata.version("prefect"), "database": str(database),
            "inode": info.st_ino}


def database_current(home: Path) -> bool:
    """Whether a server of the installed Prefect migrated the database in ``home`` (a new
    database, or one another version migrated, is migrated as the server starts)."""
    stamp = _database_stamp(home)
    try:
        return stamp is not None and json.loads((home / DATABASE_FILE).read_text()) == stamp
    except (OSError, json.JSONDecodeError):
        return False


def _note_database_current(home: Path) -> None:
    stamp = _database_stamp(home)
    if stamp is not None and not database_current(home):
        (home / DATABASE_FILE).write_text(json.dumps(stamp))


# Run as ``python -c _TIED PARENT_PID -m prefect ...``: asks the kernel for SIGTERM when the
# thread that started it ends (prctl PR_SET_PDEATHSIG = 1), gives up if that parent is
# already gone, then becomes the prefect command (the setting survives exec).
_TIED = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit('the process that started it is gone')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def _launch(home: Path, source: str, tied: bool = False) -> ApiServer:
    """Start ``prefect server start`` in its own process group on a free port.

    ``tied`` (Linux): the kernel stops the server when the thread that called this ends,
    which for the ``layered`` command is when its process ends, however it ends; a tied
    server serves one run, and starts only the services a run needs.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    prefix = ([sys.executable, "-c", _TIED, str(os.getpid())]
              if tied and sys.platform.startswith("linux") else [sys.executable])
    cmd = [*prefix, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]
    with open(home / "server.log", "ab") as log:
        proc = subprocess.Popen(
            cmd, env=_server_env(home, port, for_run=tied), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return ApiServer(api_url(port), source, proc.pid, home)


def _exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child: is it still there?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_ready(server: ApiServer, timeout: float) -> None:
    """Block until ``server`` answers ``/health``.

    Raises
    ------
    ServerStartError
        If it does not within ``timeout`` seconds or its process ends (which is stopped,
        and the end of its log quoted).
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if healthy(server.url, timeout=1.0):
            if server.home is not None:
                _note_database_current(server.home)
            return
        if server.pid is not None and _exited(server.pid):
            break
        time.sleep(0.2)
    if server.pid is not None:
        _stop_group(server.pid)
    where = ""
    if server.home is not None:
        log_file = server.home / "server.log"
        where = f"; end of {log_file}:\n{log_file.read_text(errors='replace')[-2000:]}"
    raise ServerStartError(
        f"the Prefect API at {server.url} ({server.source}) did not answer within"
        f" {timeout:g} s{where}"
    )


def _stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid`` (which we started), SIGKILL after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def running_server(settings: Settings) -> ApiServer | None:
    """The server ``layered server start`` left running, if it still answers."""
    record = settings.prefect_home / SERVER_FILE
    try:
        info = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not healthy(info.get("url", "")):
        return None
    return ApiServer(info["url"], "layered server", info.get("pid"), settings.prefect_home)


@contextlib.contextmanager
def prefect_api(settings: Settings) -> Iterator[ApiServer]:
    """The API to use for one run (see the module docstring); sets ``PREFECT_API_URL``.

    A server started here may still be starting when this yields: ``PREFECT_API_URL`` is
    set in the environment at once, so Dask workers started meanwhile inherit it, and the
    caller calls :func:`wait_ready` before running a flow. Import prefect only after.
    """
    given = os.environ.get("PREFECT_API_URL")
    if given:
        yield ApiServer(given, "PREFECT_API_URL")
        return
    os.environ.update(QUIET_ENV, PREFECT_HOME=str(settings.prefect_home))
    server = running_server(settings)
    if server is not None:
        os.environ["PREFECT_API_URL"] = server.url
        yield server
        return
    server = _launch(settings.prefect_home, "started for this run", tied=True)
    os.environ["PREFECT_API_URL"] = server.url
    try:
        yield server
    finally:
        assert server.pid is not None
        _stop_group(server.pid)
        os.environ.pop("PREFECT_API_URL", None)


def start_background(settings: Settings) -> ApiServer:
    """Start a server that outlives this process (``layered server start``), or reuse one."""
    server = running_server(settings)
    if server is not None:
        return server
    server = _launch(settings.prefect_home, "layered server")
    wait_ready(server, settings.server_timeout_s)
    record = {"url": server.url, "pid": server.pid}
    (settings.prefect_home / SERVER_FILE).write_text(json.dumps(record))
    return server


def stop_background(settings: Settings) -> ApiServer | None:
    """Stop the server ``layered server start`` started; None if none was running."""
    server = running_server(settings)
    if server is not None and server.pid:
        _stop_group(server.pid)
    (settings.prefect_home / SERVER_FILE).unlink(missing_ok=True)
    return server
