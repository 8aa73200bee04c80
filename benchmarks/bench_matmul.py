"""Layered product vs one-shot ``W @ X``, per product kernel, measured in the same run.

Prints the CPU (model, the flags that decide the kernel, torch's capability) and the kernel
``kernel="auto"`` chooses here, then for each kernel measured (numpy always; torch where
``auto`` picks it, or as asked with ``--kernels``) the time to the first and to the final
resolution as ratios against baselines timed right before each run (interleaved, median
of the repeats):

* ``f64``: one-shot numpy float64 ``W @ X``;
* ``f32``: one float32 GEMM of the same shape, the exact floor of one 4-bit x 4-bit
  component product on a BLAS-only CPU (the final resolution is compared with four);

for

* 2048x2048x2048, pre-split (split and converted once beforehand, as stored weights are)
  and cold (float64 operands split inside the timed region);
* 8192x8192x1 (a GEMV), cold;
* with ``--big``, 8192x8192x1024 pre-split: the first resolution against its float32 GEMM
  in each of five runs (about a minute per kernel).

Operands are 8-bit magnitudes (integers in [-255, 255]) split 4+4 bits, P = (8, 4, 0),
anti-diagonal ordering. Every final estimate is checked against the one-shot product.

Usage::

    python benchmarks/bench_matmul.py [--kernels numpy torch] [--repeats 5] [--big]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np

from layered.layering import Partition, SplitOperand, layered_matmul, resolve_kernel
from layered.layering.fused import describe as describe_split
from layered.layering.kernel import INT8_ENGINE_FLAGS, KernelUnavailableError, cpu_flags

P = Partition((8, 4, 0))
# BLAS (OpenBLAS) and OpenMP worker threads spin for a while after a call and slow down
# whatever runs next on the same cores (an int8 GEMM right after a float64 one takes about
# twice as long here): every timed call starts after this pause, from idle threads.
SETTLE_S = 0.3
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_description() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    try:
        import torch
        capability = torch.backends.cpu.get_cpu_capability()
        capability = f"torch {torch.__version__}, capability {capability}"
    except ImportError:
        capability = "torch not installed"
    return {"model": model, "flags": [f for f in SHOWN_FLAGS if f in flags],
            "int8_engine": any(f in flags for f in INT8_ENGINE_FLAGS), "torch": capability}


def timed(fn: Callable[[], object]) -> float:
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_layered(W, X, kernel: str) -> tuple[float, float, np.ndarray]:
    """Seconds to the first and to the final resolution, and the final estimate."""
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    results = layered_matmul(W, X, P, P, kernel=kernel)
    next(results)
    first = time.perf_counter() - start
    last = None
    for last in results:  # noqa: B007 (the last one is kept)
        pass
    assert last is not None
    return first, time.perf_counter() - start, last.estimate


def paired(repeats: int, baselines: dict[str, Callable[[], object]],
           layered: Callable[[], tuple[float, float, np.ndarray]], reference: np.ndarray
           ) -> dict[str, float]:
    """Median ratios of interleaved runs: each repeat times the baselines right before
    the layered run, so load from other processes affects both sides alike."""
    ratios: dict[str, list[float]] = {}
    for _ in range(repeats):
        base = {name: timed(fn) for name, fn in baselines.items()}
        first, final, estimate = layered()
        assert np.array_equal(estimate, reference), "final resolution differs from one-shot"
        for name, seconds in base.items():
            ratios.setdefault(f"first/{name}", []).append(first / seconds)
            ratios.setdefault(f"final/{name}", []).append(final / seconds)
        if "f32" in base:
            ratios.setdefault("final/4f32", []).append(final / (4 * base["f32"]))
        ratios.setdefault("first_s", []).append(first)
    return {name: float(np.median(values)) for name, values in ratios.items()}


def operands(m: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(-255, 256, (m, k)).astype(np.float64),
            rng.integers(-255, 256, (k, n)).astype(np.float64))


def bench_square(kernel: str, n: int, repeats: int, seed: int) -> dict[str, dict]:
    W, X = operands(n, n, n, seed)
    W32, X32 = W.astype(np.float32), X.astype(np.float32)
    baselines = {"f64": lambda: W @ X, "f32": lambda: W32 @ X32}
    reference = W @ X
    w, x = SplitOperand(W, P, name="W"), SplitOperand(X, P, name="X")
    run_layered(w, x, kernel)  # converts the digits for the kernel once
    return {
        "pre-split": paired(repeats, baselines, lambda: run_layered(w, x, kernel), reference),
        "cold": paired(repeats, baselines, lambda: run_layered(W, X, kernel), reference),
    }


def bench_gemv(kernel: str, n: int, repeats: int, seed: int) -> dict[str, dict]:
    W, X = operands(n, n, 1, seed)
    reference = W @ X
    return {"cold": paired(repeats, {"f64": lambda: W @ X},
                           lambda: run_layered(W, X, kernel), reference)}


def bench_big(kernel: str, runs: int, seed: int) -> list[float]:
    """First resolution / its float32 GEMM, 8192x8192x1024 pre-split, in each run."""
    W, X = operands(8192, 8192, 1024, seed)
    W32, X32 = W.astype(np.float32), X.astype(np.float32)
    w, x = SplitOperand(W, P, name="W"), SplitOperand(X, P, name="X")
    next(layered_matmul(w, x, P, P, kernel=kernel))  # converts the digits once
    # The conversion leaves about 0.5 GB of fresh pages: timed at once, the first run
    # took 1.13x-1.32x of its GEMM here while the machine absorbed them (the next ones
    # 0.95x-1.05x); after this pause it is like the others. Pre-split operands are
    # converted ahead of time, not right before their first resolution.
    time.sleep(3.0)
    ratios = []
    for _ in range(runs):
        gemm = timed(lambda: W32 @ X32)
        first = timed(lambda: next(layered_matmul(w, x, P, P, kernel=kernel)))
        ratios.append(first / gemm)
    return ratios


def available(kernels: list[str]) -> list[str]:
    usable = []
    for name in kernels:
        try:
            resolve_kernel(name, "cpu")
        except KernelUnavailableError as exc:
            print(f"(skipping kernel {name!r}: {exc})")
            continue
        usable.append(name)
    return usable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=["numpy", "torch"],
                        help="kernels to measure (default: numpy, and torch where auto"
                             " picks it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", action="store_true",
                        help="also 8192x8192x1024, first resolution vs its GEMM, five runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    cpu = cpu_description()
    auto = resolve_kernel("auto", "cpu").name
    kernels = args.kernels or (["numpy"] + (["torch"] if auto.startswith("torch") else []))
    print(f"CPU: {cpu['model']}; flags: {' '.join(cpu['flags']) or '-'}; {cpu['torch']}")
    print(f"kernel='auto' chooses: {auto}")
    print(f"operand split: {describe_split()}")
    print(f"8-bit operands split 4+4, anti-diagonal; median ratio of {args.repeats}"
          " interleaved runs; f64 = one-shot float64 W @ X, f32 = one float32 GEMM")
    report: dict = {"cpu": cpu, "auto": auto, "kernels": {}}
    for kernel in available(kernels):
        rows = report["kernels"][kernel] = {
            "2048^3": bench_square(kernel, 2048, args.repeats, args.seed),
            "8192x8192x1": bench_gemv(kernel, 8192, args.repeats, args.seed),
        }
        print(f"\nkernel {kernel}")
        print(f"{'case':>26} | {'first/f64':>9} {'final/f64':>9} | {'first/f32':>9}"
              f" {'final/4f32':>10}")
        for shape, modes in rows.items():
            for mode, r in modes.items():
                f32 = (f"{r['first/f32']:8.2f}x {r['final/4f32']:9.2f}x" if "first/f32" in r
                       else f"{'-':>9} {'-':>10}")
                print(f"{shape + ' ' + mode:>26} | {r['first/f64']:8.2f}x"
                      f" {r['final/f64']:8.2f}x | {f32}")
        if args.big:
            ratios = bench_big(kernel, 5, args.seed)
            rows["8192x8192x1024"] = {"first/f32 per run": ratios}
            print(f"{'8192x8192x1024 pre-split':>26} | first / its float32 GEMM, five runs: "
                  + ", ".join(f"{v:.2f}x" for v in ratios) + f" (max {max(ratios):.2f}x)")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
