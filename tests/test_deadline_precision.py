"""A deadline stops a run within one block's duration (``benchmarks/bench_deadline.py``
measures the distribution over more runs, with unslowed blocks).

The run's stop is the manifest's ``stopped_at`` (when the layering stopped, before the
plots and the summary); a block's duration is measured by Dask's task stream, not by the
pipeline.
"""

import shutil

import pytest
from runs import assert_matches_layered_matmul, read_manifest

from layered.data.operands import synthetic_operands
from layered.layering import Partition, layered_matmul

SHAPE = (256, 128, 32)
BLOCK_ROWS = 32  # 8 blocks per resolution, 4 per worker
PAUSE = 0.4  # seconds before each block


@pytest.mark.slow
def test_a_deadline_stops_the_run_within_one_block(
    delayed_cluster, blocks, run_matmul, tmp_path
):
    from distributed import Client

    W, X = synthetic_operands(SHAPE, seed=2)
    p = Partition((8, 4, 0))
    first_bound = next(iter(layered_matmul(W, X, p, p))).max_bound
    template = tmp_path / "template"
    state = run_matmul(delayed_cluster.address, shape=list(SHAPE), seed=2, run_id="d",
                       tolerance=first_bound, block_rows=BLOCK_ROWS, store=template)
    assert state.is_completed()  # resolution 1 done, two left: about 2 x 1.6 s of blocks

    blocks.set_delay(PAUSE)
    late = []
    with Client(delayed_cluster.address, set_as_default=False) as client:
        client.get_task_stream()  # starts recording
        for i, deadline in enumerate((0.8, 1.9, 3.0)):
            store = tmp_path / f"sample-{i}"
            shutil.copytree(template, store)
            state = run_matmul(delayed_cluster.address, run_id="d", deadline=deadline,
                               block_rows=BLOCK_ROWS, store=store)
            assert state.is_cancelled(), state.message
            manifest = assert_matches_layered_matmul(store, "d", W, X)
            assert manifest["stopped_reason"] == "deadline"
            late.append(manifest["stopped_at"] - manifest["deadline_at"])
            assert read_manifest(store, "d")["status"] == "Cancelled"
        stream = client.get_task_stream()
    durations = [s["stop"] - s["start"] for task in stream
                 if str(task["key"]).startswith("resolution-")
                 for s in task["startstops"] if s["action"] == "compute"]
    block = min(durations)
    assert block >= PAUSE
    assert all(0 <= t <= block for t in late), (late, block)
