"""Operands larger than a worker's memory run block by block, read from disk by rows
(``benchmarks/bench_memory.py`` does the same at a larger scale).

The workers of the delayed cluster may use 256 MiB each; W alone is 320 MiB. Each
worker's peak resident memory during the run is read from the kernel (``VmHWM``, reset
just before the run), and the final estimate is checked against an exact product.
"""

import numpy as np
import pytest
from runs import read_manifest, run_partitions, truncated_product
from worker_hooks import peak_memory, reset_peak_memory

N = 6480  # W: N x N float64 = 320 MiB
COLUMNS = 16


@pytest.mark.slow
def test_operands_larger_than_a_workers_memory_run_block_by_block(
    delayed_cluster, blocks, run_matmul, tmp_path
):
    from distributed import Client

    rng = np.random.default_rng(3)
    W = np.lib.format.open_memmap(tmp_path / "W.npy", mode="w+", dtype=np.float64,
                                  shape=(N, N))
    for start in range(0, N, 1024):  # written by rows: the test's own memory stays small
        W[start:start + 1024] = rng.uniform(-1, 1, (min(1024, N - start), N))
    W.flush()
    X = rng.uniform(-1, 1, (N, COLUMNS))
    np.save(tmp_path / "X.npy", X)
    assert W.nbytes > delayed_cluster.memory_limit

    with Client(delayed_cluster.address, set_as_default=False) as client:
        workers = delayed_cluster.worker_pids()
        client.run(reset_peak_memory)
        state = run_matmul(delayed_cluster.address,
                           operands=[str(tmp_path / "W.npy"), str(tmp_path / "X.npy")],
                           bits=[4, 4], block_rows=128, run_id="big", store=tmp_path / "runs")
        peaks = client.run(peak_memory)
        assert delayed_cluster.worker_pids() == workers  # none was restarted
    assert state.is_completed(), state.message
    print(f"peak worker memory: {sorted(p / 2**20 for p in peaks.values())} MiB"
          f" (limit {delayed_cluster.memory_limit / 2**20:g} MiB, W {W.nbytes / 2**20:g} MiB)")
    assert all(peak < delayed_cluster.memory_limit for peak in peaks.values()), peaks

    manifest = read_manifest(tmp_path / "runs", "big")
    params = manifest["parameters"]
    final = np.load(tmp_path / "runs" / "big" / manifest["resolutions"][-1]["files"]["estimate"])
    W = np.asarray(W)
    expected = truncated_product(W, X, *run_partitions(params, W, X))
    assert np.array_equal(final, expected)
