"""Faults during a matmul run lose nothing: killed workers, a killed flow process, a lost
scheduler, and two runs writing one store at once.

Every run here is on a real loopback cluster (``dask scheduler`` and ``dask worker``
processes) whose workers pause before each row block (tests/worker_hooks.py), so that a
resolution is reliably still running when the fault strikes. Results are compared bit for
bit with :func:`layered_matmul` called directly.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import loopback_cluster
from runs import (
    assert_matches_layered_matmul,
    assert_run_matches_layered_inference,
    flow_run_state,
    listed_files,
    persisted_resolutions,
    read_manifest,
    reference_results,
    snapshot,
    task_run_states,
    visible_files,
    wait_for,
)
from worker_hooks import ENV

from layered.cli import main
from layered.data.operands import synthetic_operands
from layered.data.store import RunStore, npy_header

SHAPE = (192, 128, 32)  # 6 row blocks of 32 rows per resolution (3 per worker), 3 resolutions
BLOCK_ROWS = 32


def in_background(target):
    """Run ``target`` in a thread; its result (or exception) once ``join`` returns."""
    outcome = {}

    def run():
        try:
            outcome["value"] = target()
        except BaseException as exc:  # re-raised by join, in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout=120):
        thread.join(timeout)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    return join


def cli_command(*args):
    """``layered ARGS`` as a command line of its own process."""
    return [sys.executable, "-m", "layered.cli", *map(str, args)]


def signalled_after_resolution_1(args, store, run_id, prefect_api, signum=signal.SIGKILL):
    """Run ``layered ARGS`` in a process of its own and send it ``signum`` once resolution 1
    of ``run_id`` is persisted; the ended process and its standard error."""
    proc = subprocess.Popen(
        cli_command(*args),
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: persisted_resolutions(store, run_id) >= 1, 120, "resolution 1")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return proc, err


def shape_args(seed, shape=SHAPE):
    return ["--shape", *shape, "--seed", seed, "--block-rows", BLOCK_ROWS]


# ------------------------------------------------------------------------ workers
@pytest.mark.slow
def test_a_worker_killed_mid_resolution_leaves_the_results_identical(
    delayed_cluster, blocks, run_matmul, tmp_path
):
    """SIGKILL a worker process running blocks of resolution 2: Dask reruns them
    elsewhere, the nanny restarts the worker, the run completes."""
    from distributed import Client

    blocks.set_delay(0.3)

    def kill_the_worker_running_resolution_2():
        wait_for(lambda: blocks.started(2), 120, "resolution 2 to start")
        time.sleep(0.3)  # a few of its blocks running or done
        with Client(delayed_cluster.address, set_as_default=False) as client:
            host = next(worker for worker, keys in client.processing().items()
                        if any(str(k).startswith("resolution-2-rows") for k in keys))
            pid = client.run(os.getpid)[host]
        os.kill(pid, signal.SIGKILL)
        return pid

    killed = in_background(kill_the_worker_running_resolution_2)
    state = run_matmul(delayed_cluster.address, shape=list(SHAPE), seed=5, run_id="worker-killed",
                       block_rows=BLOCK_ROWS, store=tmp_path)
    pid = killed()
    assert state.is_completed(), state.message
    assert state.result()["stopped_reason"] == "completed"
    manifest = assert_matches_layered_matmul(tmp_path, "worker-killed",
                                             *synthetic_operands(SHAPE, seed=5))
    assert len(manifest["resolutions"]) == 3
    second = blocks.started(2)
    on_killed = {b.start for b in second if b.pid == pid}
    elsewhere = {b.start for b in second if b.pid != pid}
    assert on_killed, "the killed worker ran none of resolution 2's blocks"
    assert on_killed <= elsewhere, "blocks of the killed worker were not run again"
    wait_for(lambda: pid not in delayed_cluster.worker_pids().values(), 60, "the kill")


# ---------------------------------------------------------------------- flow process
@pytest.mark.slow
def test_a_killed_flow_process_leaves_only_complete_results_and_resumes_where_it_died(
    delayed_cluster, blocks, prefect_api, tmp_path, monkeypatch, capsys
):
    blocks.set_delay(0.3)
    store, address = tmp_path / "runs", delayed_cluster.address
    proc, _ = signalled_after_resolution_1(
        ["run", "matmul", *shape_args(6), "--run-id", "killed", "--store", store,
         "--address", address], store, "killed", prefect_api)
    run_dir = store / "killed"
    died = read_manifest(store, "killed")
    done = [e["resolution"] for e in died["resolutions"]]
    assert died["status"] == "Running" and 1 <= len(done) < 3, (died["status"], done)
    # Nothing with a final name that the manifest does not list; all it lists is complete.
    assert visible_files(run_dir) - {"manifest.json"} == listed_files(died)
    for rel in listed_files(died):
        shape, _ = npy_header(run_dir / rel)
        assert np.load(run_dir / rel).shape == shape
    assert (run_dir / ".lock").read_text() == str(proc.pid)  # a dead holder, and yet:
    RunStore(store).check_resumable("killed", kind="matmul", parameters=died["parameters"])

    kept = {rel: (run_dir / rel).stat().st_mtime_ns for rel in listed_files(died)}
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    code = main(["run", "matmul", "--run-id", "killed", "--store", str(store),
                 "--address", address])
    assert code == 0, capsys.readouterr().err
    resumed = assert_matches_layered_matmul(store, "killed", *synthetic_operands(SHAPE, seed=6))
    assert [e["resolution"] for e in resumed["resolutions"]] == [1, 2, 3]
    assert resumed["status"] == "Completed"
    assert {rel: (run_dir / rel).stat().st_mtime_ns for rel in kept} == kept  # not rewritten
    layered_tasks = {name for name in task_run_states(resumed["flow_run_id"])
                     if name.startswith("resolution")}
    assert layered_tasks == {f"resolution-{r}" for r in range(len(done) + 1, 4)}
    assert flow_run_state(died["flow_run_id"]) == "Crashed"  # not "Running" forever
    assert not list(run_dir.rglob(".*.tmp")) and not list((run_dir / ".staging").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_flow_process_marks_the_run_crashed_and_it_resumes(
    delayed_cluster, blocks, prefect_api, tmp_path, monkeypatch, capsys, signum
):
    """SIGTERM (a job scheduler's stop) or SIGINT (Ctrl-C) during resolution 2: the
    command ends at once with 128 + the signal, the run is Crashed in the manifest and in
    Prefect, and resuming it recomputes only what was not persisted."""
    blocks.set_delay(0.3)
    store, address, run_id = tmp_path / "runs", delayed_cluster.address, signum.name.lower()
    proc, err = signalled_after_resolution_1(
        ["run", "matmul", *shape_args(4), "--run-id", run_id, "--store", store,
         "--address", address], store, run_id, prefect_api, signum)
    assert proc.returncode == 128 + signum, err
    said = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert f"layered: {said}; what was persisted is kept" in err
    stopped = read_manifest(store, run_id)
    done = [e["resolution"] for e in stopped["resolutions"]]
    assert stopped["status"] == "Crashed" and 1 <= len(done) < 3, (stopped["status"], done)
    assert stopped["error"] == f"interrupted by {signum.name}; resume with --run-id {run_id}"
    assert flow_run_state(stopped["flow_run_id"]) == "Crashed"
    run_dir = store / run_id
    assert visible_files(run_dir) - {"manifest.json"} == listed_files(stopped)

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    code = main(["run", "matmul", "--run-id", run_id, "--store", str(store),
                 "--address", address])
    assert code == 0, capsys.readouterr().err
    resumed = assert_matches_layered_matmul(store, run_id, *synthetic_operands(SHAPE, seed=4))
    assert resumed["status"] == "Completed"
    layered_tasks = {name for name in task_run_states(resumed["flow_run_id"])
                     if name.startswith("resolution")}
    assert layered_tasks == {f"resolution-{r}" for r in range(len(done) + 1, 4)}


@pytest.fixture(scope="module")
def even_odd_model(shared_mnist_dir, tmp_path_factory):
    """A small even/odd model (3,000 training images, 2 epochs); its saved path."""
    from layered.data import load_mnist, save_model, train_model
    from layered.data.models import TrainingRecipe

    images, labels = load_mnist(shared_mnist_dir, "train")
    recipe = TrainingRecipe(hidden_sizes=(20, 20), learning_rate=1e-2, epochs=2)
    path = tmp_path_factory.mktemp("model") / "even-odd.npz"
    save_model(train_model(images[:3000], labels[:3000], task="even-odd", recipe=recipe), path)
    return path


@pytest.mark.slow
def test_a_killed_mnist_run_resumes_where_it_died_with_the_same_answers(
    delayed_cluster, blocks, prefect_api, shared_mnist_dir, even_odd_model, tmp_path,
    monkeypatch, capsys
):
    """The mnist pipeline's chunk states survive a SIGKILL of the command as the matmul
    estimates do: the resumed run refines from them and ends with layered_inference's
    answers, bit for bit."""
    from layered.data import load_mnist

    blocks.set_delay(0.3)  # 4 chunks of 300 samples, 2 per worker: >= 0.6 s a resolution
    store, address = tmp_path / "runs", delayed_cluster.address
    args = ["run", "mnist", "--data-dir", str(shared_mnist_dir), "--model", str(even_odd_model),
            "--samples", "1200", "--chunk-size", "300", "--run-id", "m", "--store", str(store),
            "--address", address]
    signalled_after_resolution_1(args, store, "m", prefect_api)
    died = read_manifest(store, "m")
    done = [e["resolution"] for e in died["resolutions"]]
    assert died["status"] == "Running" and 1 <= len(done) < 4, (died["status"], done)
    assert visible_files(store / "m") - {"manifest.json"} == listed_files(died)

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    blocks.set_delay(0)
    assert main(args) == 0, capsys.readouterr().err
    images, _ = load_mnist(shared_mnist_dir, "test")
    _, direct = reference_results(even_odd_model, images[:1200], "gray-zone")
    resumed = assert_run_matches_layered_inference(store, "m", direct)
    assert resumed["status"] == "Completed"
    assert [e["resolution"] for e in resumed["resolutions"]] == list(
        range(1, len(resumed["resolutions"]) + 1))
    refined = {name for name in task_run_states(resumed["flow_run_id"])
               if name.startswith("resolution")}
    assert refined == {f"resolution-{r}" for r in range(len(done) + 1,
                                                        len(resumed["resolutions"]) + 1)}
    assert flow_run_state(died["flow_run_id"]) == "Crashed"


def test_a_writer_killed_just_before_publishing_a_file_leaves_the_old_state_readable(
    tmp_path,
):
    """SIGKILL at the worst moment of an atomic write, between the temporary file and the
    rename: first of an array, then of the manifest listing it."""
    dies_before_rename = (
        "import os, signal, sys\n"
        "import numpy as np\n"
        "from layered.data.store import RunStore\n"
        f"with RunStore({str(tmp_path)!r}).open('r', kind='matmul', parameters={{}}) as run:\n"
        "    run.save_array('operands/W.npy', np.arange(6.0))\n"
        "    run.record_prepared('operands', {'files': {'W': 'operands/W.npy'}})\n"
        "    if sys.argv[1] == 'array':\n"
        "        run.save_array('operands/X.npy', np.arange(4.0))\n"
        "    os.replace = lambda *paths: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    if sys.argv[1] == 'array':\n"
        "        run.save_array('operands/X.npy', np.arange(5.0))\n"
        "    run.record_prepared('operands', {'files': {'W': 'operands/W.npy',\n"
        "                                               'X': 'operands/X.npy'}})\n"
    )
    for moment in ("array", "manifest"):
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", dies_before_rename, moment], timeout=60)
        assert done.returncode == -signal.SIGKILL
        run_dir = tmp_path / "r"
        assert list(run_dir.rglob(".*.tmp")), "the killed write left no temporary file"
        manifest = read_manifest(tmp_path, "r")  # the old manifest, whole
        assert manifest["prepared"]["operands"]["files"] == {"W": "operands/W.npy"}
        if moment == "array":  # the old X, whole
            assert np.array_equal(np.load(run_dir / "operands" / "X.npy"), np.arange(4.0))
        with RunStore(tmp_path).open("r", kind="matmul", parameters={}) as run:
            assert not list(run_dir.rglob(".*.tmp"))  # the next writer removed it
            assert run.manifest == manifest


def test_a_killed_run_leaves_no_prefect_server_behind(tmp_path):
    """The server a run starts for itself ends with it, even when the run is SIGKILLed."""
    import psutil

    starts_a_server = (
        "import sys\n"
        "from pathlib import Path\n"
        "from layered.server import prefect_api\n"
        "from layered.settings import Settings\n"
        f"with prefect_api(Settings(prefect_home=Path({str(tmp_path)!r}))) as api:\n"
        "    print(api.pid, flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    run = subprocess.Popen([sys.executable, "-c", starts_a_server], env=env, text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    server = psutil.Process(int(run.stdout.readline()))
    assert server.is_running() and server.ppid() == run.pid
    run.kill()
    run.wait(timeout=30)

    def stopped():
        try:
            return server.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(stopped, 30, "the orphaned Prefect server to stop")


# ------------------------------------------------------------------------ scheduler
def test_an_unreachable_scheduler_fails_the_flow_run_before_it_writes_anything(
    run_matmul, tmp_path, monkeypatch
):
    """The flow itself checks (a deployment run has no CLI to check first)."""
    monkeypatch.setenv("LAYERED_SCHEDULER_TIMEOUT_S", "2")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    state = run_matmul(f"tcp://127.0.0.1:{port}", shape=[64, 32, 8], seed=0, run_id="nowhere",
                       store=tmp_path)
    assert time.monotonic() - t0 < 20
    assert state.is_failed()
    assert f"no Dask scheduler answered at 'tcp://127.0.0.1:{port}' within 2 s" in state.message
    assert flow_run_state(state.state_details.flow_run_id) == "Failed"
    assert snapshot(tmp_path) == {}


@pytest.mark.slow
def test_a_lost_scheduler_fails_the_run_in_bounded_time_keeping_what_was_persisted(
    delayed_cluster, blocks, run_matmul, tmp_path, monkeypatch
):
    """SIGKILL the scheduler during resolution 2: the run fails within the client's
    timeout, Failed in Prefect and in the manifest; it resumes on another cluster."""
    timeout = 2
    monkeypatch.setenv("LAYERED_SCHEDULER_TIMEOUT_S", str(timeout))
    env = {**os.environ, ENV: str(blocks.directory)}
    preload = str(Path(__file__).with_name("worker_hooks.py"))
    store = tmp_path / "runs"
    blocks.set_delay(0.3)
    with loopback_cluster(tmp_path / "doomed", n_workers=1, env=env,
                          worker_args=("--preload", preload, "--no-nanny")) as doomed:

        def kill_the_scheduler_after_resolution_1():
            wait_for(lambda: persisted_resolutions(store, "lost") >= 1, 120, "resolution 1")
            doomed.scheduler.kill()
            return time.monotonic()

        killed = in_background(kill_the_scheduler_after_resolution_1)
        state = run_matmul(doomed.address, shape=list(SHAPE), seed=7, run_id="lost",
                           block_rows=BLOCK_ROWS, store=store)
        returned, killed_at = time.monotonic(), killed()
    assert state.is_failed()
    assert returned - killed_at < timeout + 10, returned - killed_at
    failed = read_manifest(store, "lost")
    lost = len(failed["resolutions"]) + 1
    assert f"the Dask cluster lost resolution {lost} of run 'lost'" in state.message
    assert "resume with --run-id lost" in state.message
    assert failed["status"] == "Failed" and "SchedulerLostError" in failed["error"]
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_state(flow_run_id) == "Failed"
    assert "Running" not in task_run_states(flow_run_id).values()
    W, X = synthetic_operands(SHAPE, seed=7)
    assert_matches_layered_matmul(store, "lost", W, X)

    blocks.set_delay(0)
    state = run_matmul(delayed_cluster.address, run_id="lost", store=store)
    assert state.is_completed(), state.message
    resumed = assert_matches_layered_matmul(store, "lost", W, X)
    assert len(resumed["resolutions"]) == 3
    layered_tasks = {name for name in task_run_states(state.state_details.flow_run_id)
                     if name.startswith("resolution")}
    assert layered_tasks == {f"resolution-{r}" for r in range(lost, 4)}


# ------------------------------------------------------------------ concurrent runs
@pytest.mark.slow
def test_two_runs_write_one_store_at_once_and_a_second_writer_of_a_run_is_refused(
    delayed_cluster, blocks, prefect_api, run_matmul, tmp_path, monkeypatch, capsys
):
    blocks.set_delay(0.3)
    store, address = tmp_path / "runs", delayed_cluster.address
    # still running when the second writer starts: its blocks take 0.3 s each, 3 x 24 of
    # them on two workers (with 384 rows the run ended first at times, its resolutions now
    # being faster than this test's in-process flow run took to start)
    longer = (768, *SHAPE[1:])
    first = subprocess.Popen(
        cli_command("run", "matmul", *shape_args(8, longer), "--run-id", "first", "--store", store,
                    "--address", address),
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: (store / "first" / ".lock").exists()
                 and (store / "first" / ".lock").read_text() == str(first.pid), 120,
                 "the first run to hold its lock")
        # The same run id: refused by the CLI before it starts anything ...
        monkeypatch.setenv("PREFECT_API_URL", prefect_api)
        code = main(["run", "matmul", *map(str, shape_args(8, longer)), "--run-id", "first",
                     "--store", str(store), "--address", address])
        refused = capsys.readouterr().err
        assert code == 2
        assert f"run 'first' in {store} is being written by another process (pid {first.pid}" \
            in refused
        # ... and by the flow itself (a deployment run, say).
        state = run_matmul(address, shape=list(longer), seed=8, run_id="first", store=store,
                           block_rows=BLOCK_ROWS)
        assert state.is_failed() and f"another process (pid {first.pid}" in state.message
        # Another run id on the same store, at the same time.
        state = run_matmul(address, shape=list(SHAPE), seed=9, run_id="second", store=store,
                           block_rows=BLOCK_ROWS)
        assert state.is_completed(), state.message
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    one = assert_matches_layered_matmul(store, "first", *synthetic_operands(longer, seed=8))
    two = assert_matches_layered_matmul(store, "second", *synthetic_operands(SHAPE, seed=9))
    assert one["status"] == two["status"] == "Completed"
    assert len(one["resolutions"]) == len(two["resolutions"]) == 3
    assert two["started_at"] < one["stopped_at"]  # they did run at the same time
