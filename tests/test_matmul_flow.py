"""The matmul flow on real clusters: identical to layered_matmul, deadlines, tolerance, resume.

Every persisted estimate is compared bit for bit with :func:`layered_matmul` called
directly, and every persisted bound is checked against an independent exact one-shot
product computed here in integer arithmetic.
"""

import dataclasses
import importlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from runs import run_partitions, truncated_product

from layered.data.operands import synthetic_operands
from layered.layering import (
    Ordering,
    Partition,
    SplitOperand,
    layered_matmul,
    resolution_block,
    resolve_ordering,
)
from layered.tasks.fanout import Call, collect, fan_out, submit
from layered.tasks.matmul import decide

SUMMARY_KEYS = {"run_id", "status", "stopped_reason", "store", "resolutions"}
RESOLUTION_KEYS = {"resolution", "elapsed_s", "bound", "max_abs_error", "max_abs_error_float64"}


def read_manifest(store, run_id):
    return json.loads((Path(store) / run_id / "manifest.json").read_text())


def assert_run_matches_layered_matmul(store, run_id, W, X):
    """Each persisted resolution equals layered_matmul's; its bound holds. Returns the manifest."""
    manifest = read_manifest(store, run_id)
    params = manifest["parameters"]
    pw, px = run_partitions(params, W, X)
    direct = list(layered_matmul(W, X, pw, px, ordering=params["ordering"]))
    exact = truncated_product(W, X, pw, px)
    assert manifest["resolutions"], "no resolution persisted"
    for entry, res in zip(manifest["resolutions"], direct, strict=False):
        run_dir = Path(store) / run_id
        estimate = np.load(run_dir / entry["files"]["estimate"])
        bound = np.load(run_dir / entry["files"]["bound"])
        assert np.array_equal(estimate, res.estimate), f"resolution {res.resolution}"
        assert np.all(np.abs(exact - estimate) <= bound)
        np.testing.assert_allclose(bound, np.broadcast_to(res.bound, bound.shape), rtol=1e-12)
        assert entry["bound"] == pytest.approx(res.max_bound, rel=1e-12)
        assert entry["max_abs_error"] == float(np.max(np.abs(exact - estimate)))
        assert entry["bit_ops"] == res.bit_ops
    return manifest


# ------------------------------------------------------------------------ pure pieces
@pytest.mark.parametrize("ordering", ["anti-diagonal", "one-per-resolution", "shells"])
def test_resolution_blocks_chained_by_rows_equal_layered_matmul(ordering):
    rng = np.random.default_rng(1)
    W, X = rng.uniform(-4, 4, (37, 29)), rng.uniform(-2, 2, (29, 5))
    pw, px = Partition((2, 0, -2, -3)), Partition((1, -1, -4))
    order = Ordering.anti_diagonal(3, 2) if ordering == "anti-diagonal" else ordering
    direct = list(layered_matmul(W, X, pw, px, ordering=order))
    x = SplitOperand(X, px, name="X")
    blocks = [(0, 10), (10, 11), (11, 37)]
    previous = [None] * len(blocks)
    kept = [None] * len(blocks)
    for res in direct:
        parts = []
        for b, (a, z) in enumerate(blocks):
            w = SplitOperand(W[a:z], pw, name="W")
            part, kept[b] = resolution_block(
                w, x, resolve_ordering(order, pw, px), res.resolution, previous[b],
                kept=kept[b], reuse="auto",
            )
            previous[b] = part.estimate
            parts.append(part)
        assert np.array_equal(np.vstack([p.estimate for p in parts]), res.estimate)
        assert sum(p.bit_ops for p in parts) == res.bit_ops
        # with kept products carried over, the blocks do the GEMMs layered_matmul does
        assert sum(p.flops for p in parts) == res.flops
        bound = np.vstack([np.broadcast_to(p.bound, p.estimate.shape) for p in parts])
        np.testing.assert_allclose(bound, np.broadcast_to(res.bound, bound.shape), rtol=1e-12)


def test_blocks_kept_split_on_a_worker_or_split_again_give_layered_matmul(tmp_path, monkeypatch):
    from layered.data.operands import open_operand
    from layered.tasks import matmul_blocks as blocks
    from layered.tasks.matmul_blocks import MatmulJob, StagedResolution, layer_block, split_rows

    rng = np.random.default_rng(4)
    W, X = rng.integers(-127, 127, (40, 24)).astype(float), rng.uniform(-2, 2, (24, 6))
    W[20, 3] += 0.5  # off W's grid, in the second block only
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", X)
    pw, px = Partition((7, 3, 0)), Partition((1, -1, -4))
    order = resolve_ordering("anti-diagonal", pw, px)
    job = MatmulJob(open_operand(str(tmp_path / "W.npy"), "W"),
                    open_operand(str(tmp_path / "X.npy"), "X"), pw, px, order, block_rows=16)
    direct = list(layered_matmul(W, X, pw, px, ordering=order))
    # room for the first block with every kernel conversion it makes, not for two: the
    # first block is kept, the others are split again at every resolution
    whole = SplitOperand(W[:16], pw, name="W")
    x = SplitOperand(X, px, name="X")
    previous, kept = None, None
    for r in range(1, order.resolutions + 1):  # with the products a job's blocks keep
        res, kept = resolution_block(whole, x, order, r, previous, kept=kept, reuse=job.reuse)
        previous = res.estimate
    monkeypatch.setattr(blocks, "SPLIT_BYTES_UNLIMITED", whole.nbytes * 11 // 10)
    monkeypatch.setattr(blocks, "_SPLITS", type(blocks._SPLITS)())
    assert [split_rows(job, rows) for rows in job.blocks()] == [
        (False, True), (True, True), (False, True)]
    kept = blocks._w_rows(job, blocks._split_key(job, (0, 16)))[0]
    previous = None
    for res in direct:
        staged = StagedResolution(str(tmp_path / f"e{res.resolution}.npy"),
                                  str(tmp_path / f"b{res.resolution}.npy"))
        for path in (staged.estimate, staged.bound):
            np.save(path, np.zeros((40, 6)))
        for rows in job.blocks():
            layer_block(job, res.resolution, previous, staged, rows)
        assert np.array_equal(np.load(staged.estimate), res.estimate)
        # the store moves the staged estimate to its final name while the next resolution
        # runs: its blocks find it under either name
        final = tmp_path / f"estimate-{res.resolution}.npy"
        if res.resolution % 2:
            Path(staged.estimate).rename(final)
        previous = (staged.estimate, str(final))
    # the blocks' conversions for the kernel made room for the first block only
    assert [key[-1] for key in blocks._SPLITS] == [(0, 16)]
    assert blocks._w_rows(job, blocks._split_key(job, (0, 16)))[0] is kept


def test_a_block_run_again_after_its_resolution_was_committed_writes_nothing(tmp_path):
    """Dask runs a block again when its result was lost with a worker before the block of
    the next resolution that follows it ran; by then the store may have moved the staged
    files to their final names."""
    from layered.data.operands import open_operand
    from layered.tasks.matmul_blocks import MatmulJob, StagedResolution, layer_block

    W, X = synthetic_operands((8, 6, 4), seed=1)
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", X)
    p = Partition((8, 4, 0))
    job = MatmulJob(open_operand(str(tmp_path / "W.npy"), "W"),
                    open_operand(str(tmp_path / "X.npy"), "X"), p, p,
                    resolve_ordering("anti-diagonal", p, p), block_rows=4)
    staged = StagedResolution(str(tmp_path / "e1.npy"), str(tmp_path / "b1.npy"))
    for path in (staged.estimate, staged.bound):
        np.save(path, np.zeros((8, 4)))
    first = layer_block(job, 1, None, staged, (0, 4))
    committed = tmp_path / "estimate-1.npy"
    Path(staged.estimate).rename(committed)
    Path(staged.bound).unlink()
    before = np.load(committed)
    assert layer_block(job, 1, None, staged, (0, 4)) == first
    assert np.array_equal(np.load(committed), before)
    assert not Path(staged.estimate).exists()


def test_errors_against_an_exact_final_resolution_equal_those_against_the_products(
    tmp_path, monkeypatch
):
    """On integer operands whose float64 product is exact, the final resolution (bound 0)
    is that product: measured against it, the errors are those the reference products
    give, and those of an independent exact product."""
    from layered.data.operands import open_operand
    from layered.layering.product import float64_exact
    from layered.tasks.matmul_blocks import MatmulJob, error_block

    W, X = synthetic_operands((24, 40, 5), seed=3)
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", X)
    p = Partition((8, 4, 0))
    order = resolve_ordering("anti-diagonal", p, p)
    assert float64_exact(40, 1.0, 1.0, 128, 128)
    job = MatmulJob(open_operand(str(tmp_path / "W.npy"), "W"),
                    open_operand(str(tmp_path / "X.npy"), "X"), p, p, order, block_rows=10,
                    float64_exact=True)
    direct = list(layered_matmul(W, X, p, p, ordering=order))
    assert direct[-1].max_bound == 0
    paths = []
    for res in direct:
        paths.append(str(tmp_path / f"estimate-{res.resolution}.npy"))
        np.save(paths[-1], res.estimate)
    exact = W.astype(np.int64) @ X.astype(np.int64)
    for rows in job.blocks():
        measured = error_block(job, tuple(paths), rows)
        against_final = error_block(job, tuple(paths), rows, reference=paths[-1])
        assert against_final == measured
        a, b = rows
        assert [e[0] for e in measured] == [
            float(np.max(np.abs(exact[a:b] - r.estimate[a:b]))) for r in direct]
    assert measured[-1] == (0.0, 0.0)
    # the last resolution's blocks measure the same, as they compute it
    from layered.data.store import write_empty_npy, write_rows
    from layered.tasks import matmul_blocks as blocks
    from layered.tasks.matmul_blocks import ResolutionOutcome, StagedResolution, layer_block

    last = len(direct)
    staged = StagedResolution(str(tmp_path / "e.npy"), str(tmp_path / "b.npy"))
    for path in (staged.estimate, staged.bound):
        write_empty_npy(path, (24, 5), "<f8")
    earlier = tuple((p, p) for p in paths[:-2])
    written = []
    monkeypatch.setattr(blocks, "write_rows", lambda path, *args: written.append(path)
                        or write_rows(path, *args))
    outcomes = [layer_block(job, last, (paths[-2], paths[-2]), staged, rows, earlier)
                for rows in job.blocks()]
    combined = ResolutionOutcome.combine(outcomes, 0.0)
    # its bound of 0 was not written: the (sparse) staged file still reads as zeros
    assert np.array_equal(np.load(staged.estimate), direct[-1].estimate)
    assert set(written) == {staged.estimate} and not np.load(staged.bound).any()
    assert combined.earlier_errors == tuple(
        float(np.max(np.abs(exact - r.estimate))) for r in direct[:-1])
    # ... only where the float64 product is exact, and given every earlier estimate
    inexact = dataclasses.replace(job, float64_exact=False)
    assert layer_block(inexact, last, (paths[-2], paths[-2]), staged, (0, 10),
                       earlier).earlier_errors is None
    assert layer_block(job, last, (paths[-2], paths[-2]), staged, (0, 10),
                       earlier[1:]).earlier_errors is None


def test_calls_chained_after_others_wait_for_all_of_them_on_each_worker(
    local_cluster_address, tmp_path
):
    """A step submitted after another (``after``) ranks below it: on each worker, every
    block of the first step runs before any of the second, even those whose own
    predecessor ended early."""
    from distributed import Client

    with Client(local_cluster_address, set_as_default=False) as client:
        client.run(importlib.import_module, "layered.tasks.fanout")
        client.run(importlib.import_module, "layered.task_runner")
        log = client.submit(_two_steps_logged, str(tmp_path), pure=False).result(timeout=60)
    for worker in {w for w, _, _ in log}:
        steps = [step for w, step, _ in sorted(log, key=lambda e: e[2]) if w == worker]
        assert steps == sorted(steps), steps


def test_calls_submitted_after_all_of_a_step_get_its_results_once_it_ended(
    local_cluster_address, tmp_path
):
    from distributed import Client

    with Client(local_cluster_address, set_as_default=False) as client:
        client.run(importlib.import_module, "layered.tasks.fanout")
        client.run(importlib.import_module, "layered.task_runner")
        first, second = client.submit(_step_after_all, pure=False).result(timeout=60)
    ended = max(end for _, end in first)
    assert [value for value, _ in first] == [0, 10, 20, 30]
    for i, (results, started) in enumerate(second):
        assert results == [value for value, _ in first] and started >= ended, i


def _step_after_all():
    import time as clock

    from layered.tasks.fanout import Call, collect, submit

    def block(i):
        clock.sleep(0.05 * (i % 2))
        return 10 * i, clock.time()

    def follower(i, results):
        return [value for value, _ in results], clock.time()

    first = submit([Call(f"first-{i}", block, (i,)) for i in range(4)], pinned=True)
    second = submit([Call(f"second-{i}", follower, (i,)) for i in range(4)], after_all=first)
    return collect(first, None), collect(second, None)


def _two_steps_logged(directory):
    import os
    import time as clock

    from layered.tasks.fanout import Call, collect, submit

    def block(step, i):
        clock.sleep(0.02)
        return os.getpid(), step, clock.time()

    first = submit([Call(f"first-{i}", block, (1, i)) for i in range(8)], pinned=True)
    second = submit([Call(f"second-{i}", block, (2, i)) for i in range(8)], after=first)
    return collect(first, None) + collect(second, None)


def test_decide_stops_at_the_last_resolution_the_tolerance_or_the_deadline():
    assert decide.fn(3, 3, bound=0.0, tolerance=None, deadline=None) == "completed"
    assert decide.fn(1, 3, bound=5.0, tolerance=5.0, deadline=None) == "tolerance"
    assert decide.fn(1, 3, bound=5.0, tolerance=4.9, deadline=None) is None
    assert decide.fn(2, 3, bound=5.0, tolerance=None, deadline=10.0, now=10.0) == "deadline"
    assert decide.fn(2, 3, bound=5.0, tolerance=None, deadline=10.0, now=9.9) is None


@pytest.mark.parametrize(("values", "request_", "scaled", "bits"), [
    ("floats", {}, True, [7] * 8),            # float64-level accuracy by default
    ("floats", {"bits": (3, 3)}, True, [3, 3]),
    ("integers", {}, False, [4, 4]),          # integer-valued files: as before
    ("floats", {"partition": (30, 0, -30)}, False, [4, 4]),  # explicit: one partition
])
def test_float_operand_files_get_per_row_and_per_column_partitions(
    tmp_path, values, request_, scaled, bits
):
    from layered.request import MatmulRequest, resolve_matmul
    from layered.settings import Settings

    rng = np.random.default_rng(5)
    W = rng.normal(size=(6, 5)) * np.logspace(-6, 6, 6)[:, None]
    X = rng.normal(size=(5, 3))
    if values == "integers":
        W, X = np.round(W * 1e-5), np.round(X * 100)
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", X)
    request = MatmulRequest(operands=(str(tmp_path / "W.npy"), str(tmp_path / "X.npy")),
                            **request_)
    spec = resolve_matmul(request, Settings())
    assert spec.pw.scaled == spec.px.scaled == spec.parameters.get("scaled", False) == scaled
    assert spec.parameters["bits"] == bits
    if scaled:
        assert (spec.pw.axis, spec.px.axis) == (1, 0)
        assert spec.pw == Partition.auto(W, tuple(bits), axis=1)
        assert spec.px == Partition.auto(X, tuple(bits), axis=0)
        # resuming from the manifest's parameters chooses the same partitions
        again = resolve_matmul(MatmulRequest(), Settings(), stored=spec.parameters)
        assert (again.pw, again.px) == (spec.pw, spec.px)


def _sleep_block(seconds, marker_dir, i):
    time.sleep(seconds)
    (Path(marker_dir) / f"done-{i}").touch()


def _fan_out_with_deadline(marker_dir, deadline):
    calls = [Call(f"sleep-{i}", _sleep_block, (0.8, marker_dir, i)) for i in range(20)]
    result = fan_out(calls, deadline)
    return result, time.time()


def test_fan_out_returns_at_the_deadline_and_cancels_queued_blocks(
    local_cluster_address, tmp_path
):
    from distributed import Client

    with Client(local_cluster_address, set_as_default=False) as client:
        # Workers preload only what blocks run; the fan-out (and Prefect) is imported first,
        # so that the deadline measures the fan-out and not an import.
        client.run(importlib.import_module, "layered.tasks.fanout")
        client.run(importlib.import_module, "layered.task_runner")
        deadline = time.time() + 2.0
        result, returned = client.submit(
            _fan_out_with_deadline, str(tmp_path), deadline, pure=False
        ).result(timeout=60)
        time.sleep(1.0)  # let the blocks running at the deadline finish
    done = len(list(tmp_path.iterdir()))
    assert result is None
    assert returned - deadline < 0.6  # within a block's time (0.8 s), running ones not awaited
    # 2 workers x 0.8 s blocks: about 4 done by the deadline and 2 running; 20 if not cancelled.
    assert 0 < done <= 8, done


def _first_step(marker_dir, i, seconds):
    time.sleep(seconds)
    (Path(marker_dir) / f"first-{i}").touch()
    return i


def _second_step(marker_dir, i):
    return i, (Path(marker_dir) / f"first-{i}").exists()


def _chained_steps(marker_dir):
    # the first calls end in the reverse order: each second call still waits for its own
    first = submit([Call(f"first-{i}", _first_step, (marker_dir, i, 0.2 * (4 - i)))
                    for i in range(4)], pinned=True)
    second = submit([Call(f"second-{i}", _second_step, (marker_dir, i)) for i in range(4)],
                    after=first)
    return collect(second, None), collect(first, None)


def test_calls_submitted_after_others_each_start_once_their_own_predecessor_ended(
    local_cluster_address, tmp_path
):
    from distributed import Client

    with Client(local_cluster_address, set_as_default=False) as client:
        client.run(importlib.import_module, "layered.tasks.fanout")
        client.run(importlib.import_module, "layered.task_runner")
        second, first = client.submit(_chained_steps, str(tmp_path), pure=False).result(
            timeout=60)
    assert first == [0, 1, 2, 3]
    assert second == [(i, True) for i in range(4)]


# ------------------------------------------------------------------------------ flows
def test_flow_on_a_local_cluster_equals_layered_matmul(local_cluster_address, run_matmul, tmp_path):
    store = tmp_path / "runs"
    # the kernel is named here and resolved on the workers (the other flow tests use
    # "auto"); every kernel gives the same results
    state = run_matmul(local_cluster_address, shape=[300, 200, 50], seed=3, run_id="local",
                       block_rows=64, store=str(store), kernel="numpy", device="cpu")
    assert state.is_completed()
    summary = state.result()
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "Completed" and summary["stopped_reason"] == "completed"
    assert [set(r) for r in summary["resolutions"]] == [RESOLUTION_KEYS] * 3
    W, X = synthetic_operands((300, 200, 50), seed=3)
    manifest = assert_run_matches_layered_matmul(store, "local", W, X)
    assert manifest["parameters"]["partition_w"] == [8, 4, 0]  # 8-bit integers split 4+4
    assert summary["resolutions"][-1]["bound"] == 0.0
    assert summary["resolutions"][-1]["max_abs_error"] == 0.0
    plot = store / "local" / "plots" / "bound_error_by_resolution.svg"
    assert plot.read_bytes().startswith(b"<?xml")
    table, progress, markdown = _latest_artifacts(["matmul-local", "matmul-local-progress",
                                                   "matmul-local-summary"])
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["resolution"] for row in rows] == [1, 2, 3]
    assert set(rows[0]) == {"resolution", "elapsed_s", "bound", "max_abs_error",
                            "max_abs_error_float64", "bit_ops", "flops"}
    assert progress.data == 100.0
    assert plot.resolve().as_uri() in markdown.data


def _latest_artifacts(keys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    with get_client(sync_client=True) as client:
        return [
            client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[key])))[0]
            for key in keys
        ]


@pytest.mark.slow
def test_flow_on_a_loopback_cluster_with_npy_and_zarr_operands_equals_layered_matmul(
    loopback_cluster_address, run_matmul, tmp_path
):
    rng = np.random.default_rng(7)
    W = rng.uniform(-3.9, 3.9, (130, 70))  # off the finest grid: truncation matters
    X = rng.uniform(-1.9, 1.9, (70, 9)).astype(np.float32)
    np.save(tmp_path / "W.npy", W)
    z = zarr.create_array(store=str(tmp_path / "X.zarr"), shape=X.shape, dtype=X.dtype,
                          chunks=(32, 9))
    z[:] = X
    store = tmp_path / "runs"
    state = run_matmul(
        loopback_cluster_address, operands=[str(tmp_path / "W.npy"), str(tmp_path / "X.zarr")],
        bits=[3, 3], ordering="one-per-resolution", run_id="loop", block_rows=32,
        store=str(store),
    )
    assert state.is_completed(), state.message
    manifest = assert_run_matches_layered_matmul(store, "loop", W, X)
    assert len(manifest["resolutions"]) == 4
    assert manifest["parameters"]["operands"]["X"]["path"].endswith("X.zarr")


def test_flow_on_float_operand_files_reports_the_error_against_float64(
    local_cluster_address, run_matmul, tmp_path
):
    rng = np.random.default_rng(21)
    W = rng.normal(size=(90, 40)) * np.logspace(-6, 6, 90)[:, None]  # rows 1e-6 .. 1e6
    X = rng.normal(size=(40, 6))
    np.save(tmp_path / "W.npy", W)
    np.save(tmp_path / "X.npy", X)
    store = tmp_path / "runs"
    state = run_matmul(local_cluster_address, operands=[str(tmp_path / "W.npy"),
                       str(tmp_path / "X.npy")], run_id="float", block_rows=32, store=store)
    assert state.is_completed(), state.message
    summary = state.result()
    assert [set(r) for r in summary["resolutions"]] == [RESOLUTION_KEYS] * 15
    manifest = read_manifest(store, "float")
    assert manifest["parameters"]["scaled"] and manifest["parameters"]["bits"] == [7] * 8
    pw, px = run_partitions(manifest["parameters"], W, X)
    direct = list(layered_matmul(W, X, pw, px))
    for entry, res in zip(manifest["resolutions"], direct, strict=True):
        estimate = np.load(store / "float" / entry["files"]["estimate"])
        bound = np.load(store / "float" / entry["files"]["bound"])
        assert np.array_equal(estimate, res.estimate), f"resolution {res.resolution}"
        np.testing.assert_allclose(bound, np.broadcast_to(res.bound, bound.shape), rtol=1e-12)
        assert entry["max_abs_error_float64"] == pytest.approx(
            float(np.max(np.abs(W @ X - estimate))), rel=1e-6, abs=1e-9)
    scale = np.abs(W) @ np.abs(X)
    final = np.load(store / "float" / manifest["resolutions"][-1]["files"]["estimate"])
    assert np.all(np.abs(final - W @ X) <= 4 * np.finfo(float).eps * scale)
    assert summary["resolutions"][-1]["max_abs_error_float64"] <= 1e-15 * scale.max()


@pytest.fixture(scope="module")
def tolerance_stopped_run(local_cluster_address, run_matmul, tmp_path_factory):
    """A run stopped by its tolerance after resolution 1 (a template, copied by tests)."""
    W, X = synthetic_operands((256, 160, 40), seed=11)
    p = Partition((8, 4, 0))
    first_bound = next(iter(layered_matmul(W, X, p, p))).max_bound
    store = tmp_path_factory.mktemp("template") / "runs"
    state = run_matmul(local_cluster_address, shape=[256, 160, 40], seed=11, run_id="stopped",
                       tolerance=first_bound, block_rows=64, store=str(store))
    return store, state, (W, X)


def test_tolerance_stops_once_the_bound_is_within_it(tolerance_stopped_run):
    store, state, (W, X) = tolerance_stopped_run
    assert state.is_completed()
    summary = state.result()
    assert summary["stopped_reason"] == "tolerance" and summary["status"] == "Completed"
    assert [r["resolution"] for r in summary["resolutions"]] == [1]
    assert_run_matches_layered_matmul(store, "stopped", W, X)


def _copy_run(template_store, tmp_path):
    store = tmp_path / "runs"
    shutil.copytree(template_store, store)
    return store


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run.state_name for run in runs}


@pytest.mark.slow
def test_the_console_script_exits_promptly_and_its_runs_events_and_logs_reach_the_api(
    prefect_api, local_cluster_address, tmp_path
):
    """The ``layered`` script skips Python's finalization after a run: what Prefect's
    services held (task-run events, log lines) must still reach the API first."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )

    run_id = "matmul-console-exit"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("layered")), "run", "matmul", "--shape", "96",
         "64", "16", "--address", local_cluster_address, "--store", str(tmp_path / "runs"),
         "--run-id", run_id], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))
    expected = {f"{kind}-{r}" for kind in ("resolution", "decide") for r in (1, 2, 3)}
    def recorded(names):
        return expected <= set(names) and all(names[n] == "Completed" for n in expected)

    deadline = time.time() + 30  # the server records task runs from their events, later
    while not recorded(names := _task_runs(flow_run.id)) and time.time() < deadline:
        time.sleep(0.5)
    assert expected <= set(names), names
    assert all(names[n] == "Completed" for n in expected), names
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))]
    assert "decision after resolution 3/3: stop (completed)" in logs, logs


def test_deadline_stops_the_run_cancelled_keeping_its_best_resolution(
    tolerance_stopped_run, local_cluster_address, run_matmul, tmp_path
):
    template, _, (W, X) = tolerance_stopped_run
    store = _copy_run(template, tmp_path)
    state = run_matmul(local_cluster_address, run_id="stopped", deadline=0.0, store=str(store))
    assert state.is_cancelled()
    assert "kept resolution 1" in state.message
    manifest = assert_run_matches_layered_matmul(store, "stopped", W, X)
    assert manifest["status"] == "Cancelled" and manifest["stopped_reason"] == "deadline"
    assert [r["resolution"] for r in manifest["resolutions"]] == [1]
    assert not (store / "stopped" / "resolution-2").exists()  # nothing half-written visible
    assert _task_runs(state.state_details.flow_run_id)["resolution-2"] == "Cancelled"


def test_resume_computes_only_the_resolutions_not_persisted(
    tolerance_stopped_run, local_cluster_address, run_matmul, tmp_path
):
    template, _, (W, X) = tolerance_stopped_run
    store = _copy_run(template, tmp_path)
    first = store / "stopped" / "resolution-1" / "estimate.npy"
    before = first.stat().st_mtime_ns
    state = run_matmul(local_cluster_address, run_id="stopped", store=str(store))
    assert state.is_completed()
    assert state.result()["stopped_reason"] == "completed"
    manifest = assert_run_matches_layered_matmul(store, "stopped", W, X)
    assert [r["resolution"] for r in manifest["resolutions"]] == [1, 2, 3]
    assert first.stat().st_mtime_ns == before
    names = set(_task_runs(state.state_details.flow_run_id))
    assert {n for n in names if n.startswith("resolution")} == {"resolution-2", "resolution-3"}


def test_the_prefect_api_shows_a_log_line_and_task_runs_per_resolution_under_one_prefix(
    local_cluster_address, run_matmul, tmp_path
):
    """What the UI reads: the flow run's Logs tab has a line per resolution and per
    decision (as the terminal shows them), the task runs resolution-r and decide-r are
    recorded, and the run and its artifacts are named ``matmul-<id>``, not
    ``matmul-matmul-<id>``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    run_id = "matmul-ui-check"
    state = run_matmul(local_cluster_address, shape=[96, 64, 16], seed=1, run_id=run_id,
                       store=str(tmp_path / "runs"))
    assert state.is_completed(), state.message
    APILogWorker.drain_all(timeout=10)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert flow_run.name == run_id
    for r in (1, 2, 3):
        assert sum(f"] resolution {r}/3  bound" in line for line in logs) == 1, logs
        chose = "stop (completed)" if r == 3 else "go on"
        assert f"decision after resolution {r}/3: {chose}" in logs, logs
    names = _task_runs(flow_run_id)
    assert {f"resolution-{r}" for r in (1, 2, 3)} <= set(names)
    assert {f"decide-{r}" for r in (1, 2, 3)} <= set(names)
    assert all(names[n] == "Completed" for n in names), names
    keys = {a.key for a in artifacts if a.key}
    assert keys == {run_id, f"{run_id}-progress", f"{run_id}-summary"}, keys


def _kernel_state() -> tuple[bool, int]:
    import sys

    from layered.tasks import kernels

    warm_up = "layered.tasks.kernel_warm_up" in sys.modules
    return warm_up, kernels._kernel.cache_info().currsize


def test_workers_of_a_cluster_for_torch_resolve_the_kernel_as_they_start_others_do_not():
    from distributed import Client

    from layered.cluster import local_cluster
    from layered.settings import Settings

    settings = Settings.from_env().replace(n_workers=1)
    with local_cluster(settings, warm_kernel=True) as cluster, Client(cluster) as client:
        deadline = time.time() + 120
        while not all(state == (True, 1) for state in client.run(_kernel_state).values()):
            assert time.time() < deadline, client.run(_kernel_state)
            time.sleep(0.2)
    with local_cluster(settings) as cluster, Client(cluster) as client:
        assert list(client.run(_kernel_state).values()) == [(False, 0)]
        # and every worker allocates without numpy's huge-page advice (layered.tasks.worker_start)
        assert list(client.run(_huge_page_advice).values()) == [False]


def _huge_page_advice():
    from numpy._core.multiarray import _set_madvise_hugepage

    advice = _set_madvise_hugepage(False)
    _set_madvise_hugepage(advice)
    return advice
