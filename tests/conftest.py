"""Shared fixtures."""

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from layered.layering import Partition

# --- Isolation for the Prefect/Dask tests, set before anything imports prefect (settings
# are read at import): a temporary PREFECT_HOME and store, telemetry off, no inherited API,
# profile or LAYERED_* setting.
_TEST_HOME = Path(tempfile.mkdtemp(prefix="layered-tests-"))
atexit.register(shutil.rmtree, _TEST_HOME, ignore_errors=True)
for _var in [k for k in os.environ if k.startswith(("PREFECT_", "LAYERED_"))]:
    del os.environ[_var]
os.environ.update(
    PREFECT_HOME=str(_TEST_HOME / "prefect"),
    DO_NOT_TRACK="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL="WARNING",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    DASK_LOGGING__DISTRIBUTED="warning",
    LAYERED_PREFECT_HOME=str(_TEST_HOME / "layered-prefect"),
    LAYERED_STORE=str(_TEST_HOME / "runs"),
    MPLBACKEND="Agg",
)

# The real MNIST files live beside the repository (never inside it): ../shared/data/mnist.
SHARED_MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def shared_mnist_dir() -> Path:
    """The shared MNIST directory (official test split, 24,345-image training prefix)."""
    return SHARED_MNIST_DIR


# --- Layered network inference: an independent one-shot reference (test_network, test_decision).
# Written from the definitions of METHOD §4, not from layered.layering.network.
_REFERENCE_HIDDEN = {
    "relu": lambda z, alpha: np.maximum(z, 0.0),
    "leaky-relu": lambda z, alpha: np.where(z >= 0, z, alpha * z),
    "pl-sigmoid": lambda z, alpha: np.clip(0.25 * z + 0.5, 0.0, 1.0),
}


@dataclass(frozen=True)
class ReferenceNet:
    """Random weights plus a plain forward pass of the network truncated to r components."""

    weights: tuple
    biases: tuple
    hidden: str
    output: str
    alpha: float = 0.1

    def network(self):
        from layered.layering import Network

        alpha = self.alpha if self.hidden == "leaky-relu" else None
        return Network(self.weights, self.biases, self.hidden, self.output, alpha=alpha)

    def logits(self, X, px, pws, r):
        """Last-layer Z of the one-shot pass on inputs/weights/biases cut to r components."""
        h = px.truncate(X, r)
        for layer, (w, b, p) in enumerate(zip(self.weights, self.biases, pws, strict=True)):
            z = h @ p.truncate(w, r).T + p.truncate(b, r)
            last = layer == len(self.weights) - 1
            h = z if last else _REFERENCE_HIDDEN[self.hidden](z, self.alpha)
        return h[:, 0] if self.output == "sigmoid" else h

    def outputs(self, X, px, pws, r):
        z = self.logits(X, px, pws, r)
        if self.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predicted(self, X, px, pws, r):
        z = self.logits(X, px, pws, r)
        return (z >= 0).astype(int) if self.output == "sigmoid" else np.argmax(z, axis=1)


@pytest.fixture(scope="session")
def reference_net():
    """Factory ``reference_net(seed, sizes, hidden, output)`` of random ReferenceNets.

    Weights are uniform in ``±2/sqrt(fan_in)`` and biases in ``±0.5``, both inside
    ``|a| < 2``, so ``Partition((1, ...))`` covers every layer.
    """

    def make(seed, sizes, hidden="relu", output="sigmoid", alpha=0.1):
        rng = np.random.default_rng(seed)
        weights = tuple(
            rng.uniform(-1, 1, size=(n_out, n_in)) * (2 / np.sqrt(n_in))
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        biases = tuple(rng.uniform(-0.5, 0.5, size=n_out) for n_out in sizes[1:])
        return ReferenceNet(weights, biases, hidden, output, alpha)

    return make


@pytest.fixture(scope="session")
def mnist_like():
    """Factory ``mnist_like(seed, n, features=784)``: uint8/256 pixels, 70% of them 0."""

    def make(seed, n, features=784):
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, size=(n, features)) * (rng.random((n, features)) < 0.3)
        return pixels / 256.0

    return make


@pytest.fixture(scope="session")
def random_case(reference_net):
    """Draw a random network, inputs (some negative) and uneven partitions of equal R.

    ``random_case(data, min_components=1)`` with ``data`` from ``hypothesis.strategies.data()``
    returns ``(ref, X, input_partition, weight_partitions)``.
    """
    from hypothesis import strategies as st

    def draw(data, min_components=1):
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
        hidden = data.draw(st.sampled_from(("relu", "leaky-relu", "pl-sigmoid")), label="hidden")
        output, n_out = data.draw(st.sampled_from((("sigmoid", 1), ("softmax", 4))), label="output")
        depth = data.draw(st.integers(1, 3), label="depth")
        widths = st.lists(st.integers(1, 4), min_size=min_components, max_size=5)
        bits = data.draw(widths, label="bits")
        rng = np.random.default_rng(seed)
        sizes = (9, *rng.integers(1, 8, size=depth - 1).tolist(), n_out)
        ref = reference_net(seed, sizes, hidden, output)
        X = rng.uniform(-3.9, 3.9, size=(50, 9)) * (rng.random((50, 9)) < 0.7)
        px = Partition.auto([3.9], bits=bits)
        pws = [Partition.auto([1.99], bits=rng.permutation(bits).tolist()) for _ in sizes[1:]]
        return ref, X, px, pws

    return draw


# --- Prefect and Dask (test_matmul_flow, test_deployments, test_cli).
@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One Prefect API (SQLite, subprocess server) for the whole session; its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def local_cluster_address(prefect_api) -> str:
    """A LocalCluster of two process workers on 127.0.0.1, as ``layered run`` starts it."""
    from layered.cluster import local_cluster
    from layered.settings import Settings

    with local_cluster(Settings.from_env()) as cluster:
        yield cluster.scheduler_address


@dataclass
class LoopbackCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (see loopback_cluster).

    The processes start at once; ``address`` waits until every worker has joined, so a
    test can start other things (a Prefect server) while they boot.
    """

    scheduler_file: Path
    scheduler: subprocess.Popen
    workers: list
    _address: str | None = None

    @property
    def address(self) -> str:
        if self._address is None:
            from distributed import Client

            deadline = time.monotonic() + 60
            while not self.scheduler_file.exists() and time.monotonic() < deadline:
                if self.scheduler.poll() is not None:
                    raise RuntimeError(f"dask scheduler exited ({self.scheduler.returncode})")
                time.sleep(0.1)
            with Client(scheduler_file=str(self.scheduler_file), timeout=60) as client:
                client.wait_for_workers(len(self.workers), timeout=60)
                self._address = client.scheduler.address
        return self._address


@contextlib.contextmanager
def loopback_cluster(directory, n_workers=2, worker_args=(), env=None):
    """Start a real cluster: a scheduler and ``n_workers`` one-thread workers (with nannies).

    ``worker_args`` are added to every ``dask worker`` command; ``env`` is their environment.
    Every process it started is stopped on exit (if a test has not killed it already).
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    scheduler_file = Path(directory) / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)])]
    try:
        for _ in range(n_workers):  # they wait for the scheduler file to appear
            procs.append(subprocess.Popen([
                *dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                "--no-dashboard", "--host", "127.0.0.1", "--preload", "layered.tasks.matmul",
                *worker_args,
            ], env=env))
        yield LoopbackCluster(scheduler_file, procs[0], procs[1:])
    finally:
        for proc in reversed(procs):  # only the processes this fixture started
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def loopback_cluster_address(prefect_api, tmp_path_factory) -> str:
    """A real cluster: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    with loopback_cluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster.address


@dataclass
class DelayedCluster:
    """A loopback cluster whose workers pause before each matmul row block (fault tests)."""

    cluster: LoopbackCluster
    blocks: object  # worker_hooks.BlockControl
    memory_limit: int  # bytes per worker

    @property
    def address(self) -> str:
        return self.cluster.address

    def worker_pids(self) -> dict:
        """``{worker address: pid}`` of the worker processes (the nannies' children)."""
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            return client.run(os.getpid)

    def wait_for_workers(self, n: int = 2, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)


DELAYED_WORKER_MEMORY = 256 * 2**20


@pytest.fixture(scope="session")
def delayed_cluster(tmp_path_factory) -> DelayedCluster:
    """Two nanny workers preloading tests/worker_hooks.py, each limited to 256 MiB.

    Its processes boot while the test's other fixtures (the Prefect API) start.

    The pause before each row block is 0 until a test sets it (``blocks.set_delay``). The
    workers never pause for memory (a paused worker would hang a test instead of failing
    it); the nanny still restarts a worker past 95% of its limit.
    """
    from worker_hooks import ENV, BlockControl

    directory = tmp_path_factory.mktemp("delayed")
    blocks = BlockControl.create(directory / "control")
    env = {**os.environ, ENV: str(blocks.directory),
           "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False"}
    preload = str(Path(__file__).with_name("worker_hooks.py"))
    args = ("--preload", preload, "--memory-limit", str(DELAYED_WORKER_MEMORY))
    with loopback_cluster(directory, worker_args=args, env=env) as cluster:
        yield DelayedCluster(cluster, blocks, DELAYED_WORKER_MEMORY)


@pytest.fixture
def blocks(delayed_cluster):
    """The delayed cluster's block control, log cleared; no pause again after the test."""
    delayed_cluster.blocks.clear()
    yield delayed_cluster.blocks
    delayed_cluster.blocks.set_delay(0)
    delayed_cluster.wait_for_workers(2)  # a worker a test killed is back (its nanny)


@pytest.fixture(scope="session")
def run_matmul(prefect_api):
    """``run_matmul(address, store=DIR, **parameters)``: the matmul flow on that cluster.

    Returns the flow run's final state.
    """
    from layered.cluster import dask_task_runner
    from layered.flows.matmul import matmul_flow
    from layered.settings import Settings

    def run(address, *, store, **parameters):
        runner = dask_task_runner(Settings.from_env(), address)
        flow = matmul_flow.with_options(task_runner=runner)
        return flow(store=str(store), **parameters, return_state=True)

    return run


@pytest.fixture(scope="session")
def latest_artifacts(prefect_api):
    """``latest_artifacts([key, ...])``: the latest version of each keyed Prefect artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    def read(keys):
        with get_client(sync_client=True) as client:
            return [
                client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=[key])))[0]
                for key in keys
            ]

    return read


@pytest.fixture(scope="session")
def task_run_states(prefect_api):
    """``task_run_states(flow_run_id)``: ``{task run name: state name}`` of a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read(flow_run_id):
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return {run.name: run.state_name for run in runs}

    return read
