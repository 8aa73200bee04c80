"""The Dask cluster a run uses: an existing scheduler (checked first) or a LocalCluster.

A LocalCluster with process workers re-imports the main module in every worker, so a
script that starts one needs the ``if __name__ == "__main__":`` guard (the ``layered``
console script has it). Workers bind to 127.0.0.1 and start no dashboard.

A scheduler that does not answer is reported within ``Settings.scheduler_timeout_s``: by
:func:`check_scheduler` before a run starts, by :func:`connect_task_runner` when a flow
starts (a deployment run has no CLI to check first), and as :class:`SchedulerLostError`
when it stops answering mid-run (the client gives up reconnecting after the same timeout
and the run's task is lost).

Examples
--------
>>> from layered.settings import Settings
>>> dask_task_runner(Settings(dask_address="tcp://127.0.0.1:8786")).address
'tcp://127.0.0.1:8786'
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from layered.settings import Settings

if TYPE_CHECKING:
    from layered.task_runner import ClusterTaskRunner

__all__ = [
    "SchedulerUnreachableError",
    "SchedulerLostError",
    "check_scheduler",
    "connect_task_runner",
    "cluster_client",
    "close_client",
    "close_cluster",
    "local_cluster",
    "dask_task_runner",
]


class SchedulerUnreachableError(RuntimeError):
    """No Dask scheduler answered at the given address in time."""


class SchedulerLostError(RuntimeError):
    """The Dask scheduler stopped answering, or forgot a task, in the middle of a run."""


def check_scheduler(address: str, timeout: float) -> int:
    """Connect to the scheduler at ``address``; return its number of workers.

    Raises
    ------
    SchedulerUnreachableError
        If nothing answers within ``timeout`` seconds (or the address is malformed).
    """
    from distributed import Client

    try:
        with Client(address, timeout=timeout, set_as_default=False) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError, ValueError) as exc:
        raise _unreachable(address, timeout, exc) from exc


def _unreachable(address: str, timeout: float, exc: Exception) -> SchedulerUnreachableError:
    what = (f"{address!r} is not a Dask scheduler address ({exc})" if isinstance(exc, ValueError)
            else f"no Dask scheduler answered at {address!r} within {timeout:g} s ({exc})")
    return SchedulerUnreachableError(
        f"{what}; start one (`dask scheduler` and `dask worker ADDRESS`) or leave out"
        " --address (and LAYERED_DASK_ADDRESS) to run on a local cluster"
    )


def connect_task_runner(task_runner: Any) -> str:
    """Connect a flow run's :class:`ClusterTaskRunner` now; return its scheduler's address.

    The runner would otherwise connect at the first block, after the flow has written to
    its run store; connecting first makes an unreachable scheduler a clear error before.

    Raises
    ------
    SchedulerUnreachableError
        If the runner's scheduler does not answer within its timeout.
    """
    return str(task_runner.client.scheduler.address)


#: One long-lived client per scheduler address in this process, reused by every flow run
#: (connecting costs tens of milliseconds, and its first calls more).
_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def cluster_client(address: str, timeout: float) -> Any:
    """The process's client of the scheduler at ``address``, connected if need be.

    A client whose scheduler was lost (it gave up reconnecting after ``timeout``) is
    replaced by a new connection.

    Raises
    ------
    SchedulerUnreachableError
        If nothing answers within ``timeout`` seconds (or the address is malformed).
    """
    from distributed import Client

    with _CLIENTS_LOCK:
        client = _CLIENTS.get(address)
        if client is not None and client.status == "running":
            return client
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise _unreachable(address, timeout, exc) from exc
        _CLIENTS[address] = client
        return client


def close_client(address: str) -> None:
    """Close the process's client of ``address`` (before its cluster closes)."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(address, None)
    if client is not None:
        client.close()


def close_cluster(cluster: Any) -> None:
    """Close a LocalCluster this process started, after its client."""
    close_client(cluster.scheduler_address)
    cluster.close()


def _local_cluster_kwargs(settings: Settings, warm_kernel: bool = False) -> dict[str, Any]:
    preload = ["layered.tasks.worker_start", "layered.tasks.matmul_blocks",
               "layered.tasks.mnist_chunks"]
    if warm_kernel:  # the product kernel resolved as workers start (torch: 1.5 s)
        preload.append("layered.tasks.kernel_warm_up")
    return {
        "n_workers": settings.n_workers,
        "threads_per_worker": settings.threads_per_worker,
        "processes": True,
        "dashboard_address": None,
        # Without a dashboard the scheduler still serves /health on an HTTP port, 8787
        # unless told otherwise (and a warning when 8787 is taken): any free local port.
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
        "host": "127.0.0.1",
        # Workers import what the blocks run as they start, not at the first block (these
        # modules import no Prefect: about 2 s less per worker start).
        "preload": preload,
    }


def local_cluster(settings: Settings, warm_kernel: bool = False, **options: Any) -> Any:
    """A LocalCluster of ``settings.n_workers`` process workers (a context manager).

    With ``warm_kernel`` (a run whose kernel may be torch) the workers resolve the product
    kernel as they start (:mod:`layered.tasks.kernel_warm_up`). ``options`` are further
    LocalCluster arguments (``memory_limit="512MiB"``, say).
    """
    from distributed import LocalCluster

    return LocalCluster(**{**_local_cluster_kwargs(settings, warm_kernel), **options})


def dask_task_runner(settings: Settings, address: str | None = None,
                     warm_kernel: bool = False) -> ClusterTaskRunner:
    """The task runner of a flow on ``address`` (default ``settings.dask_address``).

    With no address, the runner starts a LocalCluster for the flow run and closes it after.
    """
    from layered.task_runner import ClusterTaskRunner

    address = address or settings.dask_address
    kwargs = None if address else _local_cluster_kwargs(settings, warm_kernel)
    return ClusterTaskRunner(address, kwargs, timeout=settings.scheduler_timeout_s)
