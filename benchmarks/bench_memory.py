"""Out-of-core matmul: operands larger than a worker's memory limit, run block by block.

Writes ``W`` (``--rows`` x ``--columns`` float64, by rows: this script never holds it
whole) and ``X`` (``--columns`` x ``--n``) as ``.npy`` files, starts a local Dask cluster
of two process workers limited to ``--memory-limit`` each, runs ``matmul_flow`` on the
files, and prints each worker's peak resident memory during the run (the kernel's
``VmHWM``, reset just before it) against the limit and the operand sizes. Workers read
their rows of the operands from disk (memory-mapped ``.npy``) and keep their split blocks
while they use under 30% of their limit, splitting the others again at each resolution;
a worker restarted by its nanny for exceeding the limit would show as a changed pid and
fails the benchmark. The final estimate is checked against the exact truncated product,
computed here by row blocks. The baseline, timed in the same run: the one-shot float64
product ``W @ X`` in this process, reading W from its file by the same row blocks (a
worker could not hold W whole), and its peak memory above this process's start.

Usage::

    python benchmarks/bench_memory.py [--rows 16384] [--columns 16384] [--n 16]
                                      [--memory-limit 512MiB] [--block-rows 512]
                                      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from layered.settings import Settings

# Quiet: the table below is the output (set before anything imports prefect). Workers
# never pause for memory (a paused worker would hang the run rather than fail it); the
# nanny still restarts a worker that reaches 95% of its limit.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
os.environ.setdefault("DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE", "False")

ROWS_AT_A_TIME = 1024


def reset_peak_memory() -> int:
    """Make this process's peak resident size its current one; that size, in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak_memory()


def peak_memory() -> int:
    """This process's peak resident size (VmHWM) since the last reset, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def write_operands(directory: Path, rows: int, columns: int, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    W = np.lib.format.open_memmap(directory / "W.npy", mode="w+", dtype=np.float64,
                                  shape=(rows, columns))
    for start in range(0, rows, ROWS_AT_A_TIME):
        W[start:start + ROWS_AT_A_TIME] = rng.uniform(
            -1, 1, (min(ROWS_AT_A_TIME, rows - start), columns))
    W.flush()
    np.save(directory / "X.npy", rng.uniform(-1, 1, (columns, n)))
    return directory / "W.npy", directory / "X.npy"


def matches_truncated_product(estimate: np.ndarray, w_path: Path, x_path: Path,
                              pw: list[int], px: list[int]) -> bool:
    """Is ``estimate`` exactly ``W_t @ X_t``? Integers on the finest grids, by row blocks."""
    W = np.load(w_path, mmap_mode="r")
    xq = np.trunc(np.load(x_path) * 2.0 ** -px[-1])
    scale = 2.0 ** (pw[-1] + px[-1])
    for start in range(0, W.shape[0], ROWS_AT_A_TIME):
        wq = np.trunc(W[start:start + ROWS_AT_A_TIME] * 2.0 ** -pw[-1])
        if not np.array_equal(estimate[start:start + ROWS_AT_A_TIME], (wq @ xq) * scale):
            return False
    return True


def one_shot(w_path: Path, x_path: Path, block_rows: int) -> tuple[float, int]:
    """Seconds and peak memory (bytes above the start) of ``W @ X`` by row blocks of W."""
    start = reset_peak_memory()
    t0 = time.perf_counter()
    X = np.load(x_path)
    rows = np.load(w_path, mmap_mode="r").shape[0]
    out = np.empty((rows, X.shape[1]))
    for a in range(0, rows, block_rows):
        # mapped afresh per block, as a worker reads it: the pages read leave the
        # process's resident set with the mapping
        W = np.load(w_path, mmap_mode="r")
        out[a:a + block_rows] = W[a:a + block_rows] @ X
        del W
    return time.perf_counter() - t0, peak_memory() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--columns", type=int, default=16384)
    parser.add_argument("--n", type=int, default=16, help="columns of X")
    parser.add_argument("--memory-limit", default="512MiB", help="per worker")
    parser.add_argument("--block-rows", type=int, default=Settings().block_rows)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from dask.utils import parse_bytes

    limit = parse_bytes(args.memory_limit)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        settings = Settings.from_env().replace(prefect_home=tmp_path / "prefect",
                                               store=tmp_path / "runs")
        from layered.server import prefect_api, wait_ready

        api = stack.enter_context(prefect_api(settings))  # before prefect is imported
        from distributed import Client

        from layered.cluster import dask_task_runner, local_cluster
        from layered.flows.matmul import matmul_flow

        cluster = stack.enter_context(local_cluster(settings, memory_limit=limit))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        t0 = time.perf_counter()
        w_path, x_path = write_operands(tmp_path, args.rows, args.columns, args.n)
        written = time.perf_counter() - t0
        baseline_s, baseline_bytes = one_shot(w_path, x_path, args.block_rows)
        wait_ready(api, settings.server_timeout_s)
        flow = matmul_flow.with_options(
            task_runner=dask_task_runner(settings, cluster.scheduler_address))
        pids = client.run(os.getpid)
        before = client.run(reset_peak_memory)
        t0 = time.perf_counter()
        state = flow(operands=[str(w_path), str(x_path)], bits=[4, 4], run_id="big",
                     block_rows=args.block_rows, store=str(settings.store), return_state=True)
        wall = time.perf_counter() - t0
        peaks = client.run(peak_memory)
        restarted = client.run(os.getpid) != pids
        manifest = json.loads((settings.store / "big" / "manifest.json").read_text())
        final = np.load(settings.store / "big" / manifest["resolutions"][-1]["files"]["estimate"])
        params = manifest["parameters"]
        exact = matches_truncated_product(final, w_path, x_path, params["partition_w"],
                                          params["partition_x"])
        sizes = {"W": w_path.stat().st_size, "X": x_path.stat().st_size}
    mib = 2**20
    print(f"W {sizes['W'] / mib:.0f} MiB, X {sizes['X'] / mib:.1f} MiB on disk"
          f" (W written in {written:.1f} s);"
          f" worker memory limit {limit / mib:.0f} MiB, block rows {args.block_rows}")
    print(f"flow run {state.name} in {wall:.1f} s; final estimate equals the exact"
          f" truncated product: {exact}; a worker restarted: {restarted}")
    layering = [entry["elapsed_s"] for entry in manifest["resolutions"]]
    prepare = manifest["stopped_at"] - manifest["started_at"] - layering[-1]
    print(f"in the flow: operand preparation (split on the workers, kept while a worker"
          f" uses under 30% of its limit)"
          f" {prepare:.1f} s, then resolutions done at " + ", ".join(
              f"{seconds:.1f}" for seconds in layering) + " s of layering")
    print(f"one-shot float64 W @ X by the same row blocks, in one process: {baseline_s:.2f} s,"
          f" peak {baseline_bytes / mib:.0f} MiB above its start; layered flow / one-shot:"
          f" {wall / baseline_s:.1f}x the time")
    print(f"{'worker':28s} {'at start MiB':>12s} {'peak MiB':>9s} {'peak / limit':>13s}")
    for worker, peak in sorted(peaks.items()):
        print(f"{worker:28s} {before[worker] / mib:12.0f} {peak / mib:9.0f}"
              f" {peak / limit:13.0%}")
    if args.json:
        args.json.write_text(json.dumps({
            "sizes_bytes": sizes, "memory_limit_bytes": limit, "block_rows": args.block_rows,
            "wall_s": wall, "prepare_s": prepare, "layering_s": layering,
            "one_shot_s": baseline_s, "one_shot_peak_bytes": baseline_bytes,
            "state": state.name, "exact": exact, "restarted": restarted,
            "workers": {w: {"start_bytes": before[w], "peak_bytes": peaks[w]} for w in peaks},
        }, indent=2))
    if not (state.is_completed() and exact and not restarted):
        raise SystemExit("the out-of-core run did not complete exactly within the limit")


if __name__ == "__main__":
    main()
