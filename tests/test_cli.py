"""The ``layered`` command: its help, bad input refused before anything starts, the default.

Bad-input tests run ``main()`` in-process and check that nothing was started or written (no
store directory, no Prefect home); the embedded default runs the real console script in a
fresh environment with no Prefect API set, as a newcomer would.
"""

import doctest
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from layered.cli import main
from layered.data.store import RunStore
from layered.layering import Partition, layered_matmul
from layered.request import MatmulRequest, resolve_matmul
from layered.settings import Settings

FIXED_MATMUL_OPTIONS = ["--shape", "--seed", "--operands", "--deadline", "--tolerance",
                        "--json", "--address", "--store", "--run-id", "--kernel", "--device"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A store and a Prefect home of this test only (neither exists yet)."""
    monkeypatch.setenv("LAYERED_PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_nothing_started(tmp_path):
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "prefect-home").exists()


def test_help_tells_every_fixed_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "matmul", "--help"])
    text = capsys.readouterr().out
    for option in FIXED_MATMUL_OPTIONS:
        assert option in text
    assert "2048 2048 512" in text  # the embedded default it documents
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("run", "deploy", "server", "ui"):
        assert re.search(rf"^\s+{command}\s", text, re.MULTILINE)


@pytest.mark.parametrize("module", [
    "layered.settings", "layered.data.operands", "layered.data.store", "layered.tasks.report",
    "layered.tasks.matmul", "layered.request", "layered.cluster",
    "layered.server",
])
def test_docstring_examples_of_the_pipeline_modules(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module}"


def test_settings_come_from_defaults_then_environment():
    s = Settings.from_env({"LAYERED_SHAPE": "64 32 8", "LAYERED_DASK_ADDRESS": "tcp://h:1",
                           "LAYERED_BITS": "3,3,2"})
    assert (s.shape, s.dask_address, s.bits, s.n_workers) == ((64, 32, 8), "tcp://h:1",
                                                              (3, 3, 2), 2)


def test_a_bad_environment_setting_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("LAYERED_SEED", "seven")
    code, _, err = run_main(capsys, "run", "matmul")
    assert code == 2 and "LAYERED_SEED='seven' is invalid" in err


def _save(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: [str(d / "missing.npy"), _save(d, "x.npy", np.ones((4, 2)))], "does not exist"),
        (lambda d: [_save(d, "w.npy", np.ones((3, 4))), _save(d, "x.npy", np.ones((5, 2)))],
         "mismatched shapes"),
        (lambda d: [_save(d, "w.npy", np.array([[1.0, np.nan]])), _save(d, "x.npy", np.ones(2))],
         r"W\[0, 1\] = nan"),
        (lambda d: [_save(d, "w.npy", np.zeros((0, 2))), _save(d, "x.npy", np.ones(2))],
         "is empty"),
        (lambda d: [_save(d, "w.npy", np.full((2, 2), 300.0)), _save(d, "x.npy", np.ones(2)),
                    "--partition", "8", "4", "0"], r"W\[0, 0\] = 300.0 .* out of range"),
    ],
    ids=["missing-file", "mismatched-shapes", "nan", "empty", "out-of-range"],
)
def test_bad_operands_are_refused_before_anything_starts(capsys, isolated, make, problem):
    t0 = time.perf_counter()
    code, _, err = run_main(capsys, "run", "matmul", "--store", str(isolated / "runs"),
                            "--operands", *make(isolated))
    assert code == 2
    assert re.search(problem, err), err
    assert time.perf_counter() - t0 < 5
    assert_nothing_started(isolated)


@pytest.mark.parametrize("pipeline", ["matmul", "mnist"])
def test_a_kernel_missing_here_is_refused_before_anything_starts(capsys, isolated, monkeypatch,
                                                               pipeline):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    code, _, err = run_main(capsys, "run", pipeline, "--store", str(isolated / "runs"),
                            "--kernel", "torch")
    assert code == 2
    assert 'needs torch, which is not installed; install it with pip install -e ".[torch]"' in err
    code, _, err = run_main(capsys, "run", pipeline, "--store", str(isolated / "runs"),
                            "--device", "cuda")
    assert code == 2 and "torch" in err
    code, _, err = run_main(capsys, "run", pipeline, "--store", str(isolated / "runs"),
                            "--kernel", "numpy", "--device", "cuda")
    assert code == 2 and "kernel='numpy' runs on the CPU" in err
    assert_nothing_started(isolated)


@pytest.mark.parametrize("pipeline", ["matmul", "mnist"])
def test_cuda_without_a_gpu_is_refused_before_anything_starts(capsys, isolated, monkeypatch,
                                                              pipeline):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(capsys, "run", pipeline, "--store", str(isolated / "runs"),
                            "--kernel", "torch", "--device", "cuda")
    assert code == 2
    assert "device='cuda' needs a CUDA GPU, but none is visible" in err
    assert_nothing_started(isolated)


def test_an_unreachable_scheduler_is_reported_within_its_timeout(capsys, isolated, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LAYERED_SCHEDULER_TIMEOUT_S", "2")
    t0 = time.perf_counter()
    code, _, err = run_main(capsys, "run", "matmul", "--shape", "8", "8", "8", "--store",
                            str(isolated / "runs"), "--address", f"tcp://127.0.0.1:{port}")
    assert code == 2
    assert f"no Dask scheduler answered at 'tcp://127.0.0.1:{port}' within 2 s" in err
    assert time.perf_counter() - t0 < 10
    assert_nothing_started(isolated)


def test_resuming_a_run_with_other_parameters_is_refused_before_anything_starts(
    capsys, isolated
):
    store = isolated / "runs"
    spec = resolve_matmul(MatmulRequest(shape=(8, 6, 4), seed=1), Settings())
    with RunStore(store).open("r", kind="matmul", parameters=spec.parameters):
        pass
    code, _, err = run_main(capsys, "run", "matmul", "--shape", "8", "6", "5", "--store",
                            str(store), "--run-id", "r")
    assert code == 2
    assert "shape: started with [8, 6, 4], now [8, 6, 5]" in err
    assert not (isolated / "prefect-home").exists()


def test_a_command_stopped_while_its_cluster_starts_marks_its_flow_run_crashed(
    capsys, prefect_api, monkeypatch, tmp_path
):
    """The flow run is created while the cluster starts: Ctrl-C before it runs leaves it
    Crashed in the UI, not Pending."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    import layered.cluster

    def interrupted(*_args, **_kwargs):
        time.sleep(1.0)  # long enough for the flow run to be created, usually
        raise KeyboardInterrupt

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    monkeypatch.setattr(layered.cluster, "local_cluster", interrupted)
    run_id = "matmul-stopped-while-starting"
    code, _, _ = run_main(capsys, "run", "matmul", "--shape", "8", "8", "8", "--store",
                          str(tmp_path / "runs"), "--run-id", run_id)
    assert code == 130
    deadline, states = time.time() + 30, []  # or created after the interrupt, then crashed
    while time.time() < deadline and states != ["Crashed"]:
        with get_client(sync_client=True) as client:
            states = [run.state_name for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))]
        time.sleep(0.2)
    assert states == ["Crashed"]


@pytest.mark.slow
def test_embedded_default_runs_on_a_fresh_home_with_no_prefect_api(tmp_path):
    """The console script, no PREFECT_API_URL, a new Prefect home: it starts and stops its
    own server, and writes the summary JSON with exactly the fixed fields."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(LAYERED_PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = tmp_path / "summary.json"
    script = Path(sys.executable).with_name("layered")
    done = subprocess.run(
        [str(script), "run", "matmul", "--shape", "96", "64", "32", "--seed", "4",
         "--store", str(tmp_path / "runs"), "--run-id", "cli", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert set(summary) == {"run_id", "status", "stopped_reason", "store", "resolutions"}
    assert summary["run_id"] == "cli" and summary["status"] == "Completed"
    assert summary["stopped_reason"] == "completed"
    assert [set(r) for r in summary["resolutions"]] == [
        {"resolution", "elapsed_s", "bound", "max_abs_error", "max_abs_error_float64"}] * 3
    assert "started for this run" in done.stderr
    url = re.search(r"Prefect API: (\S+)", done.stderr).group(1)
    from layered.server import healthy

    assert not healthy(url, timeout=1.0)  # the server it started is gone
    from layered.data.operands import synthetic_operands

    W, X = synthetic_operands((96, 64, 32), seed=4)
    final = list(layered_matmul(W, X, Partition((8, 4, 0)), Partition((8, 4, 0))))[-1]
    estimate = np.load(tmp_path / "runs" / "cli" / "resolution-3" / "estimate.npy")
    assert np.array_equal(estimate, final.estimate)


@pytest.mark.slow
def test_a_server_started_here_points_its_ui_at_its_own_port(tmp_path):
    """The bundled UI asks /ui-settings where the API is; it must name the port the server
    listens on, not Prefect's default 4200, or the UI shows no runs."""
    from layered.server import _launch, _stop_group, wait_ready

    server = _launch(tmp_path / "prefect-home", "test")
    try:
        wait_ready(server, timeout=120)
        base = server.url.removesuffix("/api")
        with urllib.request.urlopen(f"{base}/ui-settings", timeout=10) as response:
            settings = json.load(response)
        assert settings["api_url"] == server.url
    finally:
        _stop_group(server.pid)
