"""Adaptive layered inference over the MNIST test set vs one-shot float64 inference.

In one run: trains the paper's even/odd model (seed 0, a few seconds), then times
one-shot float64 ``Network.forward`` on the 10,000 test images and layered inference with
the paper's partitions (METHOD §6, R = 4 one-bit components) under each rule. Prints
wall-clock and bit operations as ratios against the one-shot pass (median of interleaved
repeats, so machine load affects both sides alike), with accuracy and the fraction of
samples that needed the last resolution.

Usage::

    python benchmarks/bench_inference.py [--data-dir ../shared/data/mnist] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from layered.data import load_mnist, pixels_to_unit, train_model
from layered.layering import Network, layered_inference, one_shot_cost
from layered.reports.mnist import PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def timed_layered(net, X, rule):
    start = time.perf_counter()
    results = list(layered_inference(net, X, PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS,
                                     rule=rule))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    train = load_mnist(args.data_dir, "train")
    images, labels = load_mnist(args.data_dir, "test")
    X, targets = pixels_to_unit(images), (labels % 2 == 0).astype(int)
    net = Network(**train_model(*train, task="even-odd", seed=0).to_network_kwargs())
    one_shot_bits, _ = one_shot_cost(net, PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS,
                                     len(X))

    def one_shot() -> float:
        start = time.perf_counter()
        net.forward(X)
        return time.perf_counter() - start

    one_shot()
    base_acc = np.mean((net.forward(X) >= 0.5) == targets)
    print(f"{len(X)} test images, even/odd 784-20-20-1, R=4 one-bit components;"
          f" one-shot float64 accuracy {base_acc:.4f}")
    header = (f"{'rule':>10} | {'wall-clock':>10} | {'bit ops':>8} | {'accuracy':>8} |"
              f" {'need last res':>13}")
    print(header)
    print("-" * len(header))
    for rule in (None, "gray-zone", "certified"):
        ratios = []
        for _ in range(args.repeats):
            base = one_shot()
            elapsed, results = timed_layered(net, X, rule)
            ratios.append(elapsed / base)
        last = results[-1]
        bits = sum(r.bit_ops for r in results) / one_shot_bits
        accuracy = np.mean((np.ravel(last.outputs) >= 0.5) == targets)
        needed = np.mean(last.frozen_at == last.resolutions)
        print(f"{rule or 'none':>10} | {np.median(ratios):9.2f}x | {bits:7.3f}x |"
              f" {accuracy:8.4f} | {needed:13.3f}")


if __name__ == "__main__":
    main()
