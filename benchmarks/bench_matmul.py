"""Layered product vs one-shot float64 ``W @ X``, measured in the same run.

Prints, per shape, the time to the first and to the final resolution and the peak memory
(operands plus traced allocations) as ratios against one-shot numpy float64 ``W @ X`` on
the same operands, for

* cold operands: float64 arrays split inside the timed region, and
* pre-split operands: split and converted once beforehand (as stored model weights are),
  so only the resolutions themselves are timed.

Operands are 8-bit magnitudes (integers in [-255, 255]) split 4+4 bits, P = (8, 4, 0).

Usage::

    python benchmarks/bench_matmul.py [--shapes 2048x2048x2048 4096x4096x64 8192x8192x1]
        [--ordering anti-diagonal] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from layered.layering import Partition, SplitOperand, layered_matmul

DEFAULT_SHAPES = ["2048x2048x2048", "4096x4096x64", "8192x8192x1"]


def paired_ratios(
    repeats: int, base: Callable[[], float], fn: Callable[[], tuple[float, float]]
) -> tuple[float, float, float]:
    """Median one-shot seconds and median (first, final) ratios over interleaved runs.

    Each repeat times the one-shot baseline right before the layered run and takes the
    ratio of that pair, so load from other processes affects both sides alike.
    """
    bases, firsts, finals = [], [], []
    for _ in range(repeats):
        b = base()
        first, final = fn()
        bases.append(b)
        firsts.append(first / b)
        finals.append(final / b)
    return float(np.median(bases)), float(np.median(firsts)), float(np.median(finals))


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def run_layered(W, X, p: Partition, ordering: str) -> tuple[float, float]:
    start = time.perf_counter()
    results = layered_matmul(W, X, p, p, ordering=ordering)
    next(results)
    first = time.perf_counter() - start
    for _ in results:
        pass
    return first, time.perf_counter() - start


def bench_shape(m: int, k: int, n: int, ordering: str, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    W = rng.integers(-255, 256, (m, k)).astype(np.float64)
    X = rng.integers(-255, 256, (k, n)).astype(np.float64)
    p = Partition((8, 4, 0))

    def one_shot() -> float:
        start = time.perf_counter()
        W @ X
        return time.perf_counter() - start

    one_shot()  # warm up BLAS threads
    base, cold_first, cold_final = paired_ratios(
        repeats, one_shot, lambda: run_layered(W, X, p, ordering)
    )
    w_split, x_split = SplitOperand(W, p, name="W"), SplitOperand(X, p, name="X")
    run_layered(w_split, x_split, p, ordering)  # converts the digits once
    _, warm_first, warm_final = paired_ratios(
        repeats, one_shot, lambda: run_layered(w_split, x_split, p, ordering)
    )

    ref = W @ X
    last = list(layered_matmul(w_split, x_split, p, p, ordering=ordering))[-1]
    assert np.array_equal(last.estimate, ref), "final resolution differs from the one-shot product"

    operands = W.nbytes + X.nbytes  # both sides hold the float64 operands
    base_mem = operands + peak_bytes(lambda: W @ X)
    cold_mem = operands + peak_bytes(lambda: run_layered(W, X, p, ordering))
    return {
        "shape": [m, k, n],
        "ordering": ordering,
        "one_shot_s": base,
        "cold": {"first_ratio": cold_first, "final_ratio": cold_final},
        "pre_split": {"first_ratio": warm_first, "final_ratio": warm_final},
        "peak_memory_ratio": cold_mem / base_mem,
        "final_equals_one_shot": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    parser.add_argument("--ordering", default="anti-diagonal")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    rows = []
    print(f"ordering={args.ordering}, 8-bit operands split 4+4, median ratio of"
          f" {args.repeats} interleaved runs against one-shot float64 W @ X")
    header = (f"{'M x K x N':>18} {'one-shot s':>10} | {'cold first':>10} {'cold final':>10} |"
              f" {'pre first':>9} {'pre final':>9} | {'peak mem':>8}")
    print(header)
    print("-" * len(header))
    for spec in args.shapes:
        m, k, n = (int(v) for v in spec.lower().split("x"))
        row = bench_shape(m, k, n, args.ordering, args.repeats, args.seed)
        rows.append(row)
        print(f"{spec:>18} {row['one_shot_s']:10.4f} | {row['cold']['first_ratio']:9.2f}x"
              f" {row['cold']['final_ratio']:9.2f}x | {row['pre_split']['first_ratio']:8.2f}x"
              f" {row['pre_split']['final_ratio']:8.2f}x | {row['peak_memory_ratio']:7.2f}x")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
