"""Per-row and per-column scaling on floating-point operands: accuracy and cost.

Prints, in one run:

(a) accuracy, W of 192 x 1024 with rows scaled 10^-6 .. 10^6 (log-spaced) times Gaussian
    entries, Gaussian X of 1024 x N, 8 slices of 7 bits per row of W and per column of X:

    * the final resolution's max error, entry by entry normalised by ``|W| @ |X|``,
      against float64 one-shot ``W @ X`` on the same data (ratio; the target is <= 2);
    * the worst row's relative error at resolution 2 with per-row/per-column partitions
      and with one global partition of the same bits (ratio; the target is >= 1000).
      A row's relative error is ``||row error||_2 / ||row of W @ X||_2``; the max-norm
      version and the shells ordering are printed beside it.

    The reference is exact up to ~1e-26 of ``|W| @ |X|``: a double-double dot product
    (error-free products and sums, Ogita-Rump-Oishi), checked against exact rational
    arithmetic on sampled entries.

(b) cost, 2048^3 (``--size``) with the same kernel: per-row W and per-column X against
    one global partition of the same bits, whole layered product (splitting included),
    median of interleaved pairs (ratio; the target is <= 1.10), by wall time and by CPU
    time of all threads (less sensitive to other processes on a shared machine).

Usage::

    python benchmarks/bench_scaling.py [--n 256] [--size 2048] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from fractions import Fraction

import numpy as np

from layered.layering import KERNEL_NAMES, Partition, layered_matmul, resolve_kernel

BITS = (7,) * 8


def cpu_description() -> str:
    """CPU model and the flags that decide which exact kernels are fast."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("", "unknown CPU", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{model}; flags: {' '.join(shown) or 'none of avx2/avx512'}"


# ---------------------------------------------------------------- exact reference
def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dekker's split: a = hi + lo exactly, each with at most 26 significant bits."""
    c = a * 134217729.0  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


def reference_product(W: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``W @ X`` as an unevaluated sum ``hi + lo``, error about ``(K u)**2 (|W| @ |X|)``.

    Every product ``W_ik X_kj`` is split error-free into ``p + e`` (Dekker), every sum
    into ``s + e`` (Knuth's TwoSum); the errors are summed in float64 beside the sum.
    """
    wh, wl = _split(W)
    xh, xl = _split(X)
    s = np.zeros((W.shape[0], X.shape[1]))
    c = np.zeros_like(s)
    for k in range(W.shape[1]):
        a, ah, al = W[:, k, None], wh[:, k, None], wl[:, k, None]
        b, bh, bl = X[None, k, :], xh[None, k, :], xl[None, k, :]
        p = a * b
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
        t = s + p
        bb = t - s
        c += ((s - (t - bb)) + (p - bb)) + e
        s = t
    return s, c


def check_reference(W, X, ref, samples: int, rng) -> None:
    """Compare the reference with exact rational arithmetic on sampled entries."""
    hi, lo = ref
    scale = np.abs(W) @ np.abs(X)
    for _ in range(samples):
        i, j = int(rng.integers(W.shape[0])), int(rng.integers(X.shape[1]))
        exact = sum((Fraction(float(w)) * Fraction(float(x)) for w, x in zip(W[i], X[:, j],
                                                                              strict=True)),
                    Fraction(0))
        off = abs(Fraction(float(hi[i, j])) + Fraction(float(lo[i, j])) - exact)
        assert off <= Fraction(1e-24) * Fraction(float(scale[i, j])), (i, j, float(off))


def error_against(estimate: np.ndarray, ref: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    hi, lo = ref
    return np.abs((estimate - hi) - lo)


# ---------------------------------------------------------------- (a) accuracy
def accuracy(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    m, k = 192, 1024
    W = rng.normal(size=(m, k)) * np.logspace(-6, 6, m)[:, None]
    X = rng.normal(size=(k, n))
    ref = reference_product(W, X)
    check_reference(W, X, ref, samples=12, rng=rng)
    scale = np.abs(W) @ np.abs(X)
    row_norm = np.linalg.norm(ref[0], axis=1)
    row_max = np.max(np.abs(ref[0]), axis=1)

    per_row = (Partition.auto(W, BITS, axis=1), Partition.auto(X, BITS, axis=0))
    global_ = (Partition.auto(W, BITS), Partition.auto(X, BITS))
    out: dict = {"shape": [m, k, n], "bits": list(BITS)}
    one_shot = float(np.max(error_against(W @ X, ref) / scale))
    for ordering in ("anti-diagonal", "shells"):
        rows = {}
        for name, (pw, px) in (("per_row", per_row), ("global", global_)):
            results = list(layered_matmul(W, X, pw, px, ordering=ordering))
            second, final = results[1], results[-1]
            err2 = error_against(second.estimate, ref)
            err_final = error_against(final.estimate, ref)
            bound_ok = bool(np.all(err_final <= final.bound + final.truncation_bound))
            rows[name] = {
                "final_max_error_over_abs_product": float(np.max(err_final / scale)),
                "final_bound_holds": bound_ok,
                "resolution2_worst_row_rel_error_2norm": float(
                    np.max(np.linalg.norm(err2, axis=1) / row_norm)),
                "resolution2_worst_row_rel_error_maxnorm": float(
                    np.max(np.max(err2, axis=1) / row_max)),
                "resolution2_max_error_over_abs_product": float(np.max(err2 / scale)),
            }
        out[ordering] = rows
    out["one_shot_float64_max_error_over_abs_product"] = one_shot
    return out


# ---------------------------------------------------------------- (b) cost
def run(W, X, pw, px, kernel) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of a whole layered product."""
    # BLAS and torch threads keep spinning for a while after a call: a run started at once
    # would share the cores with them (bench_matmul pauses alike).
    time.sleep(0.3)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in layered_matmul(W, X, pw, px, kernel=kernel):
        pass
    return time.perf_counter() - start, time.process_time() - cpu


def cost(size: int, repeats: int, seed: int, kernel) -> dict:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(size, size)) * np.logspace(-6, 6, size)[:, None]
    X = rng.normal(size=(size, size))
    per_row = (Partition.auto(W, BITS, axis=1), Partition.auto(X, BITS, axis=0))
    global_ = (Partition.auto(W, BITS), Partition.auto(X, BITS))
    kinds = ("per_row", "global")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    ratios, cpu_ratios = [], []
    run(W, X, *global_, kernel)  # warm up BLAS threads and the allocator
    for r in range(repeats):
        order = kinds if r % 2 == 0 else kinds[::-1]  # alternate which goes first
        pair = {kind: run(W, X, *(per_row if kind == "per_row" else global_), kernel)
                for kind in order}
        for kind in kinds:
            times[kind].append(pair[kind][0])
        ratios.append(pair["per_row"][0] / pair["global"][0])
        cpu_ratios.append(pair["per_row"][1] / pair["global"][1])
    return {
        "shape": [size] * 3,
        "global_s": float(np.median(times["global"])),
        "per_row_s": float(np.median(times["per_row"])),
        "ratio_median": float(np.median(ratios)),
        "ratios": ratios,
        "cpu_ratio_median": float(np.median(cpu_ratios)),
        "cpu_ratios": cpu_ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="columns of X in (a)")
    parser.add_argument("--size", type=int, default=2048, help="M = K = N in (b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernel", default="auto", choices=KERNEL_NAMES,
                        help="product kernel of (b), the same for both partitions")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}; numpy {np.__version__}")

    acc = accuracy(args.n, args.seed)
    m, k, n = acc["shape"]
    one_shot = acc["one_shot_float64_max_error_over_abs_product"]
    print(f"\n(a) accuracy: W {m}x{k} rows 1e-6..1e6, Gaussian X {k}x{n}, bits {BITS}")
    print(f"    float64 one-shot W @ X: max |error| / (|W| @ |X|) = {one_shot:.3e}")
    for ordering in ("anti-diagonal", "shells"):
        pr, gl = acc[ordering]["per_row"], acc[ordering]["global"]
        final = pr["final_max_error_over_abs_product"]
        print(f"  {ordering}:")
        print(f"    final, per-row: max |error| / (|W| @ |X|) = {final:.3e}"
              f"  ({final / one_shot:.2f}x float64 one-shot; target <= 2)"
              f"  bound + truncation bound hold: {pr['final_bound_holds']}")
        for norm in ("2norm", "maxnorm"):
            key = f"resolution2_worst_row_rel_error_{norm}"
            print(f"    resolution 2, worst row relative error ({norm}): per-row {pr[key]:.3e},"
                  f" global {gl[key]:.3e}  ({gl[key] / pr[key]:.0f}x smaller; target >= 1000)")
        key = "resolution2_max_error_over_abs_product"
        print(f"    resolution 2, max |error| / (|W| @ |X|): per-row {pr[key]:.3e},"
              f" global {gl[key]:.3e}  ({gl[key] / pr[key]:.0f}x smaller)")

    kernel = resolve_kernel(args.kernel)
    speed = {**cost(args.size, args.repeats, args.seed, kernel), "kernel": kernel.name}
    print(f"\n(b) cost at {args.size}^3, bits {BITS}, {kernel.name} kernel ({args.kernel}),"
          " splitting included,"
          f" {args.repeats} interleaved pairs:")
    print(f"    global {speed['global_s']:.2f} s, per-row/per-column {speed['per_row_s']:.2f} s;"
          f" median ratio {speed['ratio_median']:.3f} (target <= 1.10);"
          f" ratios {', '.join(f'{r:.3f}' for r in speed['ratios'])}")
    print(f"    CPU time (all threads) median ratio {speed['cpu_ratio_median']:.3f};"
          f" ratios {', '.join(f'{r:.3f}' for r in speed['cpu_ratios'])}")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"cpu": cpu_description(), "accuracy": acc, "cost": speed}, fh, indent=2)


if __name__ == "__main__":
    main()
