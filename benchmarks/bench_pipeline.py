"""Start-up time and orchestration overhead of ``layered run matmul`` at its embedded default.

Runs, in one go:

1. the pure computation: :func:`layered_matmul` on the default operands in this process
   (best of ``--repeats``), the reference for the overhead;
2. ``layered run matmul`` three times as a user would, each a fresh process: on a new
   Prefect home (first run: the server creates its database), on the same home again
   (later run: the server starts on an existing database), and with a server kept up by
   ``layered server start`` (reused);

and prints, per run, the start-up (command start until the flow can start: Prefect API and
local Dask cluster), the flow run's wall time, and the overhead ratio
``(flow wall - compute) / compute``.

Usage::

    python benchmarks/bench_pipeline.py [--shape 2048 2048 512] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layered.data.operands import synthetic_operands
from layered.layering import Partition, layered_matmul
from layered.settings import Settings

LAYERED = str(Path(sys.executable).with_name("layered"))


def compute_seconds(shape: tuple[int, int, int], repeats: int) -> float:
    """Best wall time of the whole layered product, all resolutions, in this process."""
    settings = Settings.from_env()
    W, X = synthetic_operands(shape, settings.seed, settings.value_bits)
    p = Partition.auto([2.0 ** (settings.value_bits - 1)], settings.bits)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _res in layered_matmul(W, X, p, p, ordering=settings.ordering):
            pass
        best = min(best, time.perf_counter() - t0)
    return best


def timed_run(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``layered ARGS``; the start-up, flow and total seconds it reports and takes."""
    t0 = time.perf_counter()
    done = subprocess.run([LAYERED, *args], env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"layered {' '.join(args)} failed:\n{done.stderr}")

    def seconds(pattern: str) -> float:
        match = re.search(pattern, done.stderr)
        return float(match.group(1)) if match else float("nan")

    return {
        "startup_s": seconds(r"ready after ([\d.]+) s"),
        "flow_s": seconds(r"flow run \w+ after ([\d.]+) s"),
        "total_s": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=list(Settings().shape))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shape = tuple(args.shape)
    compute = compute_seconds(shape, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(LAYERED_PREFECT_HOME=f"{tmp}/prefect", LAYERED_STORE=f"{tmp}/runs")
        run = ["run", "matmul", "--shape", *map(str, shape)]
        rows = {"first run (new Prefect home)": timed_run(run, env),
                "later run (existing home)": timed_run(run, env)}
        subprocess.run([LAYERED, "server", "start"], env=env, check=True,
                       capture_output=True)
        try:
            rows["server kept up (layered server start)"] = timed_run(run, env)
        finally:
            subprocess.run([LAYERED, "server", "stop"], env=env, capture_output=True)
    print(f"shape {shape}: pure layered_matmul compute {compute:.2f} s (best of {args.repeats})")
    print(f"{'run':40s} {'start-up s':>10s} {'flow s':>8s} {'total s':>8s} {'overhead':>9s}")
    for name, row in rows.items():
        row["overhead"] = (row["flow_s"] - compute) / compute
        print(f"{name:40s} {row['startup_s']:10.1f} {row['flow_s']:8.1f} {row['total_s']:8.1f}"
              f" {row['overhead']:9.0%}")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "compute_s": compute, "runs": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
