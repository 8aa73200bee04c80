"""Adaptive layered inference over the MNIST test set vs one-shot float64 inference.

In one run: trains the paper's even/odd model (seed 0, a few seconds), then times
one-shot float64 ``Network.forward`` on the 10,000 test images and layered inference with
the paper's partitions (METHOD §6, R = 4 one-bit components) under each rule (none,
gray-zone, margin, certified) and each product kernel asked for. Prints the CPU (model,
the flags that decide which exact arithmetic is fast, the load average, BLAS and its
threads), then per kernel and rule, as ratios against the one-shot pass (median of
interleaved repeats, so machine load affects both sides alike; every run starts after a
pause, from idle threads): wall-clock of the whole layered inference (operand splitting
included) and of its first answer, bit operations, accuracy, and the fraction of samples
that needed the last resolution.

The one-shot pass is plain numpy (BLAS with its default threads). Importing torch (the
``torch`` kernel, or ``auto`` where it picks torch) can change how fast that pass runs
(torch's OpenMP threads share the cores with BLAS's), so kernels that need no torch are
timed first, before anything imports it, and the one-shot pass is timed in both states:
each row's ratios are against the one-shot pass timed beside it, in the same state (its
last column says which), and rows timed with torch imported also give their wall-clock
against the torch-free one-shot pass.

Usage::

    python benchmarks/bench_inference.py [--data-dir ../shared/data/mnist] [--repeats 7]
                                         [--kernels numpy auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from layered.data import load_mnist, pixels_to_unit, train_model
from layered.layering import Network, fused, layered_inference, one_shot_cost
from layered.layering.fused import describe as describe_split
from layered.layering.kernel import cpu_flags, resolve_kernel
from layered.reports.mnist import PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
RULES = (None, "gray-zone", "margin", "certified")
# CPU flags that decide which exact arithmetic is fast: float32/float64 BLAS (AVX2,
# AVX-512) and int8 dot products (VNNI, AMX).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")
# BLAS (OpenBLAS) and OpenMP worker threads spin for a while after a call and slow down
# whatever runs next on the same cores: every timed run, one-shot or layered, starts after
# this pause, from idle threads (as in bench_matmul).
SETTLE_S = 0.3


def cpu_summary() -> str:
    """CPU model, the flags in KERNEL_FLAGS it has, cores, and numpy's version."""
    model, flags = platform.processor() or platform.machine(), cpu_flags()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.partition(":")[2].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    present = [f for f in KERNEL_FLAGS if f in flags] or ["(flags unknown)"]
    return (f"CPU: {model}; {os.cpu_count()} cores; flags: {' '.join(present)};"
            f" numpy {np.__version__}; {load_summary()}")


def load_summary() -> str:
    """The machine's load: other work on the cores slows both sides, not always alike."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return "load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def threads_summary() -> str:
    """The BLAS libraries loaded and their threads, and torch's intra-op threads if imported."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        blas = "BLAS threads: unknown (no threadpoolctl)"
    else:
        blas = "; ".join(
            f"BLAS: {lib['internal_api']} {lib['version']} ({lib.get('architecture', '?')}),"
            f" {lib['num_threads']} threads" for lib in threadpool_info()
            if lib["user_api"] == "blas") or "BLAS: none found"
    torch = sys.modules.get("torch")
    return blas + (f"; torch {torch.__version__}: {torch.get_num_threads()} intra-op threads"
                   if torch is not None else "; torch not imported")


def timed_layered(net, X, rule, kernel) -> tuple[float, float, list]:
    """Seconds to the first answer and to the last, and every resolution's result."""
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    results, first = [], 0.0
    for res in layered_inference(net, X, PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS,
                                 rule=rule, kernel=kernel):
        first = first or time.perf_counter() - start
        results.append(res)
    return first, time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--kernels", nargs="+", default=["numpy", "auto"],
                        choices=["numpy", "torch", "auto"],
                        help="product kernels for the exact small-integer products, each"
                        " timed in turn (default: numpy and what auto picks here); numpy"
                        " first, before anything imports torch")
    args = parser.parse_args()
    names = sorted(dict.fromkeys(args.kernels), key=lambda name: name != "numpy")

    train = load_mnist(args.data_dir, "train")
    images, labels = load_mnist(args.data_dir, "test")
    X, targets = pixels_to_unit(images), (labels % 2 == 0).astype(int)
    net = Network(**train_model(*train, task="even-odd", seed=0).to_network_kwargs())
    one_shot_bits, _ = one_shot_cost(net, PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS,
                                     len(X))

    def one_shot() -> float:
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        net.forward(X)
        return time.perf_counter() - start

    one_shot()
    base_acc = np.mean((net.forward(X) >= 0.5) == targets)
    torch_free = [] if "torch" in sys.modules else [one_shot() for _ in range(args.repeats)]
    print(cpu_summary())
    print(f"input split: {describe_split()}; numba loads in the background from"
          f" {fused._PRELOAD_VALUES:,} values (these inputs: {X.size:,})")
    print(threads_summary())
    print(f"{len(X)} test images, even/odd 784-20-20-1, R=4 one-bit components;"
          f" one-shot float64 accuracy {base_acc:.4f}; median of {args.repeats} interleaved"
          " repeats; ratios against the one-shot pass timed beside them")
    header = (f"{'kernel':>9} | {'rule':>10} | {'wall-clock':>10} | {'first ans':>9} |"
              f" {'bit ops':>8} | {'accuracy':>8} | {'need last res':>13} | {'one-shot':>8} |"
              f" {'torch':>6} | {'vs torch-free one-shot':>22}")
    print(header)
    print("-" * len(header))
    for name in names:
        kernel = resolve_kernel(name)  # "torch", or "auto" picking it, imports torch
        torch_loaded = "torch" in sys.modules
        for rule in RULES:
            timed_layered(net, X, rule, kernel)  # warm-up
            elapsed, firsts, bases = [], [], []
            for _ in range(args.repeats):
                bases.append(one_shot())
                first, total, results = timed_layered(net, X, rule, kernel)
                elapsed.append(total)
                firsts.append(first)
            if not torch_loaded:
                torch_free += bases
            base = np.median(bases)
            last = results[-1]
            bits = sum(r.bit_ops for r in results) / one_shot_bits
            accuracy = np.mean((np.ravel(last.outputs) >= 0.5) == targets)
            needed = np.mean(last.frozen_at == last.resolutions)
            against_free = (f"{np.median(elapsed) / np.median(torch_free):9.2f}x of"
                            f" {np.median(torch_free) * 1e3:5.1f}ms" if torch_free else "n/a")
            print(f"{kernel.name:>9} | {rule or 'none':>10} |"
                  f" {np.median(np.divide(elapsed, bases)):9.2f}x |"
                  f" {np.median(np.divide(firsts, bases)):8.2f}x |"
                  f" {bits:7.3f}x | {accuracy:8.4f} | {needed:13.3f} | {base * 1e3:6.1f}ms |"
                  f" {'loaded' if torch_loaded else 'none':>6} | {against_free:>22}")
    print(threads_summary() + "; " + load_summary())


if __name__ == "__main__":
    main()
