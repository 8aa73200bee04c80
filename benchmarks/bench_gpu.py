"""The int8 product kernel on a CUDA GPU: exactness, then layered vs torch float64 matmul.

One short run (a few minutes at most) that needs only Python, numpy and a CUDA build of
torch; the project need not be installed: run it from the source tree,

    python benchmarks/bench_gpu.py [--sizes 8192 16384] [--repeats 3] [--json out.json]

1. Exactness: the torch kernel on the GPU against the numpy kernel on the CPU, on small
   products with awkward shapes (fewer than 17 rows, sizes not multiples of 8), digits at
   their extremes, and one product at the largest inner size int32 sums allow; estimates
   must be equal bit for bit and every bound must hold.
2. Speed: for each n, 14-bit integer operands split 7+7 (P = (14, 7, 0)), pre-split, with
   estimates and bounds kept on the device: the time to the first and to the final
   resolution as ratios against ``torch.matmul`` of the float64 operands on the same GPU,
   timed right before each run (median of the repeats). The final estimate is checked
   equal to that float64 product.

``--device cpu`` runs the same on the CPU at small sizes, to try the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def import_layering():
    """``layered.layering`` from this source tree, installed or not.

    The project maps ``layered.layering`` to ``./layering``; without an install, the
    ``layered`` package (``./layered``) gets the tree's root on its path so that
    ``layered.layering`` resolves there too.
    """
    try:
        import layered.layering as layering
        return layering
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT))
    import layered

    if str(ROOT) not in layered.__path__:
        layered.__path__.append(str(ROOT))
    import layered.layering as layering
    return layering


L = import_layering()


def synchronize(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def exactness(kernel, device: str) -> list[str]:
    """Problems where the device kernel differs from the numpy kernel (empty: none)."""
    rng = np.random.default_rng(0)
    failures = []
    cases = [((m, k, n), pts) for m in (1, 5, 17, 40) for k in (1, 7, 8, 300)
             for n in (1, 3, 8, 24) for pts in ((14, 7, 0), (8, 4, 0), (9, 6, 3, 0))]
    for (m, k, n), pts in cases:
        p = L.Partition(pts)
        top = p.limit - p.resolution
        W = rng.integers(-top, top + 1, (m, k)).astype(np.float64)
        X = rng.choice([-top, top], (k, n))  # every digit at its extreme
        ref = list(L.layered_matmul(W, X, p, p, kernel="numpy"))
        got = list(L.layered_matmul(W, X, p, p, kernel=kernel))
        for a, b in zip(ref, got, strict=True):
            if not np.array_equal(a.estimate, b.estimate):
                failures.append(f"estimate differs: {(m, k, n)}, P={pts}, r={a.resolution}")
            error = np.abs(W @ X - b.estimate)
            if not np.all(error <= b.bound):
                failures.append(f"bound fails: {(m, k, n)}, P={pts}, r={a.resolution}")
    # the largest inner size at which int8 digits of magnitude 127 sum exactly in int32
    k = (2**31 - 1) // (127 * 127)
    w = np.full((20, k), 127, dtype=np.int8)
    w[1::2] = -127
    x = np.full((k, 9), -127, dtype=np.int8)
    int8 = np.dtype(np.int8)
    got = kernel.to_host(kernel.product(kernel.prepare(w, int8), kernel.prepare(x, int8)))
    if not np.array_equal(np.asarray(got, dtype=np.int64), w.astype(np.int64) @ x):
        failures.append(f"int8 product at the int32 limit (K={k}) differs")
    return failures


def timed_ratios(torch, kernel, device: str, n: int, repeats: int) -> dict:
    rng = np.random.default_rng(n)
    p = L.Partition((14, 7, 0))
    W = rng.integers(-(2**14) + 1, 2**14, (n, n)).astype(np.float64)
    X = rng.integers(-(2**14) + 1, 2**14, (n, n)).astype(np.float64)
    w, x = L.SplitOperand(W, p, name="W"), L.SplitOperand(X, p, name="X")
    Wd, Xd = torch.from_numpy(W).to(device), torch.from_numpy(X).to(device)
    del W, X

    def one_shot() -> tuple[float, object]:
        synchronize(torch, device)
        start = time.perf_counter()
        out = Wd @ Xd
        synchronize(torch, device)
        return time.perf_counter() - start, out

    def layered() -> tuple[float, float, object]:
        synchronize(torch, device)
        start = time.perf_counter()
        results = L.layered_matmul(w, x, p, p, kernel=kernel, to_host=False)
        next(results)
        synchronize(torch, device)
        first = time.perf_counter() - start
        last = None
        for last in results:  # noqa: B007 (the last one is kept)
            pass
        synchronize(torch, device)
        return first, time.perf_counter() - start, last.estimate

    _, reference = one_shot()  # warm-up: cuBLAS handles, the digits moved to the device
    layered()
    firsts, finals, bases = [], [], []
    for _ in range(repeats):
        base, _ = one_shot()
        first, final, estimate = layered()
        estimate = torch.as_tensor(estimate, device=device)
        if not torch.equal(estimate, reference):
            raise AssertionError(f"n={n}: final estimate differs from the float64 product")
        del estimate
        bases.append(base)
        firsts.append(first / base)
        finals.append(final / base)
    return {"n": n, "float64_s": float(np.median(bases)),
            "first/f64": float(np.median(firsts)), "final/f64": float(np.median(finals)),
            "final_equals_float64": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    import torch

    kernel = L.TorchKernel(args.device)  # a clear error if there is no GPU
    name = (torch.cuda.get_device_name() if args.device == "cuda"
            else "CPU " + torch.backends.cpu.get_cpu_capability())
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda};"
          f" kernel='auto' chooses {L.resolve_kernel('auto').name}")
    t0 = time.perf_counter()
    failures = exactness(kernel, args.device)
    print(f"exactness vs the numpy kernel: {'OK' if not failures else 'FAILED'}"
          f" ({time.perf_counter() - t0:.1f} s)")
    for failure in failures[:20]:
        print("  " + failure)
    report: dict = {"device": name, "exact": not failures, "sizes": []}
    print("14-bit operands split 7+7, pre-split, on the device; ratio to torch float64"
          f" matmul, median of {args.repeats}")
    print(f"{'n':>6} {'float64 s':>10} {'first':>8} {'final':>8}")
    for n in args.sizes:
        row = timed_ratios(torch, kernel, args.device, n, args.repeats)
        report["sizes"].append(row)
        print(f"{n:>6} {row['float64_s']:10.4f} {row['first/f64']:7.3f}x"
              f" {row['final/f64']:7.3f}x")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(report, fh, indent=2)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
