"""Start-up time and orchestration overhead of ``layered run``, as a user runs it.

Prints, in one run (each ``layered`` invocation a fresh process, as a user would type it):

1. the default ``layered run matmul`` end to end: on a new Prefect home (the server
   creates its database), on that home again (a later run, no server kept up), and with
   ``layered server start`` kept up (median of ``--repeats``);
2. per-resolution orchestration with the server kept up: the flow's time between
   resolutions (the manifest's ``elapsed_s``) minus the time the same resolution takes in
   :func:`layered_matmul` on the same operands in this process, median over resolutions
   and repeats;
3. the overhead ``(flow wall - compute) / compute`` at 4096 x 4096 x 1024 and at the
   default 2048 x 2048 x 512, measured interleaved, median of ``--repeats``. Compute is
   the whole :func:`layered_matmul` (every resolution, with the kernel the run takes for
   the shape, :func:`layered.request.run_kernel`; warm: the kernel's one-time import and
   first call are made before any timing) on the same operands held in memory in this
   process. The flow wall is the flow run's time, so its
   overhead includes generating the operands to disk, splitting them on the workers,
   persisting every resolution, the error measurement (a float64 one-shot product, after
   the layering), the plots and the Prefect API; the figure "until the last resolution"
   ends at the manifest's ``stopped_at`` instead (without the error measurement, the
   plots and the flow's end); and "flow run start and end", the flow wall minus the flow
   body (its first line to its outcome recorded): Prefect's start and end of the flow run
   and the summary artifact; and the flow wall of an 8 x 8 x 8 run, whose compute is next
   to nothing: the fixed cost of a run of three resolutions (its flow run, task runs,
   persistence), over the compute of each shape, is the lowest overhead a run of that
   shape could show;
4. the default ``layered run mnist`` end to end on an existing home (its model trained
   once first, not timed).

with the targets of each figure, the CPU model and flags, and the load average before and
after (other processes on the machine inflate every figure).

Usage::

    python benchmarks/bench_pipeline.py [--repeats 3] [--data-dir ../shared/data/mnist]
        [--json out.json] [--parts new,existing,mnist,kept,large]

``--parts`` measures only some figures (to iterate quickly): ``new`` and ``existing`` the
first two end-to-end runs, ``mnist`` the mnist run, ``kept`` the runs with the server kept
up (end to end, per resolution, overhead at the default shape, the 8 x 8 x 8 run),
``large`` the overhead at 4096 x 4096 x 1024 (with the server kept up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from layered.data.operands import synthetic_operands
from layered.layering import Partition, layered_matmul
from layered.request import run_kernel
from layered.settings import Settings

LAYERED = str(Path(sys.executable).with_name("layered"))
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
LARGE = (4096, 4096, 1024)
#: A run with next to no compute (its blocks take about a millisecond): its flow wall is
#: what every run of three resolutions pays, whatever its size.
FLOOR = (8, 8, 8)
PARTS = ("new", "existing", "mnist", "kept", "large")


def cpu_line() -> str:
    """The CPU model, its SIMD flags of note, and the cores."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    noted = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    return f"{model}; {os.cpu_count()} cores; flags {' '.join(noted) or 'none of note'}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def library_times(shape: tuple[int, int, int]) -> list[float]:
    """Seconds each resolution takes in :func:`layered_matmul` on the default operands,
    with the kernel ``layered run matmul`` takes for this shape (:func:`run_kernel`).

    The first call in a process also imports and warms the kernel (torch: about 1.5 s);
    :func:`main` makes it once, untimed, before measuring."""
    settings = Settings.from_env()
    W, X = synthetic_operands(shape, settings.seed, settings.value_bits)
    p = Partition.auto([2.0 ** (settings.value_bits - 1)], settings.bits)
    kernel = run_kernel("auto", None, math.prod(shape), settings)
    times, t0 = [], time.perf_counter()
    for _res in layered_matmul(W, X, p, p, ordering=settings.ordering, kernel=kernel):
        now = time.perf_counter()
        times.append(now - t0)
        t0 = now
    return times


def timed_run(args: list[str], env: dict[str, str], summary: Path | None = None
              ) -> dict[str, Any]:
    """Run ``layered ARGS``: its end-to-end seconds, the start-up and flow seconds it
    reports, and (with ``summary``) the resolutions' ``elapsed_s`` of its run summary."""
    extra = ["--json", str(summary)] if summary is not None else []
    t0 = time.perf_counter()
    done = subprocess.run([LAYERED, *args, *extra], env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"layered {' '.join(args)} failed:\n{done.stderr}")

    def seconds(pattern: str) -> float:
        match = re.search(pattern, done.stderr)
        return float(match.group(1)) if match else float("nan")

    row: dict[str, Any] = {
        "startup_s": seconds(r"ready after ([\d.]+) s"),
        "flow_s": seconds(r"flow run \w+ after ([\d.]+) s"),
        "total_s": total,
    }
    if summary is not None:
        result = json.loads(summary.read_text())
        row["elapsed_s"] = [r["elapsed_s"] for r in result["resolutions"]]
        manifest = json.loads(
            (Path(result["store"]) / result["run_id"] / "manifest.json").read_text())
        row["layering_s"] = manifest["stopped_at"] - manifest["started_at"]
        # the flow body (from its first line to its outcome recorded): the rest of the
        # flow wall is Prefect's start and end of the flow run, and the summary artifact
        row["engine_s"] = row["flow_s"] - (manifest["finished_at"] - manifest["started_at"])
    return row


def steps(elapsed: list[float]) -> list[float]:
    """Seconds of each resolution from the cumulative ``elapsed_s``."""
    return [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]


def parts(text: str) -> set[str]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown parts {sorted(unknown)}; choose among {','.join(PARTS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--parts", type=parts, default=set(PARTS),
                        help=f"comma-separated figures to measure (default all: {','.join(PARTS)})")
    args = parser.parse_args()
    default = tuple(Settings().shape)
    print(f"CPU: {cpu_line()}")
    print(f"load average before: {load()}")
    results: dict[str, Any] = {"cpu": cpu_line(), "load_before": load()}
    fresh: dict[str, Any] = {}
    existing: list[dict[str, Any]] = []
    mnist_runs: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    orchestration: list[float] = []
    overhead: dict[tuple[int, int, int], list[float]] = {default: [], LARGE: []}
    layering: dict[tuple[int, int, int], list[float]] = {default: [], LARGE: []}
    engine: list[float] = []
    floor: list[float] = []
    computes: dict[tuple[int, int, int], list[float]] = {default: [], LARGE: []}
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items()
               if k != "PREFECT_API_URL" and not k.startswith("LAYERED_")}
        env.update(LAYERED_PREFECT_HOME=f"{tmp}/prefect", LAYERED_STORE=f"{tmp}/runs")
        matmul = ["run", "matmul"]
        if "new" in args.parts:
            fresh = timed_run(matmul, env)
        if "existing" in args.parts:
            existing = [timed_run(matmul, env) for _ in range(args.repeats)]
        if "mnist" in args.parts:
            mnist = ["run", "mnist", "--data-dir", str(args.data_dir)]
            subprocess.run([LAYERED, "run", "train", "--data-dir", str(args.data_dir)],
                           env=env, check=True, capture_output=True)
            mnist_runs = [timed_run(mnist, env) for _ in range(args.repeats)]
        shapes = [s for s, part in ((default, "kept"), (LARGE, "large")) if part in args.parts]
        if shapes:
            subprocess.run([LAYERED, "server", "start"], env=env, check=True,
                           capture_output=True)
        for shape in {default, *shapes}:  # each kernel's import and first call, untimed
            library_times(shape)
        try:
            for i in range(args.repeats if shapes else 0):
                library = library_times(default)
                for shape in shapes:
                    if shape == default:
                        ran = timed_run(matmul, env, Path(tmp) / f"kept-{i}.json")
                        kept.append(ran)
                        orchestration += [f - c for f, c in
                                          zip(steps(ran["elapsed_s"]), library, strict=True)]
                        compute = sum(library)
                    else:
                        compute = sum(library_times(shape))
                        ran = timed_run([*matmul, "--shape", *map(str, shape)], env,
                                        Path(tmp) / f"large-{i}.json")
                    computes[shape].append(compute)
                    engine.append(ran["engine_s"])
                    overhead[shape].append((ran["flow_s"] - compute) / compute)
                    layering[shape].append((ran["layering_s"] - compute) / compute)
                floor.append(timed_run([*matmul, "--shape", *map(str, FLOOR)], env)["flow_s"])
        finally:
            if shapes:
                subprocess.run([LAYERED, "server", "stop"], env=env, capture_output=True)

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows) if rows else math.nan

    def median_of(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    lines = [
        ("default matmul, new Prefect home (s)", fresh.get("total_s", math.nan), "<= 25"),
        ("default matmul, existing home (s)", median(existing, "total_s"), "<= 12"),
        ("default matmul, server kept up (s)", median(kept, "total_s"), "<= 6"),
        ("orchestration per resolution, kept up (ms)", 1000 * median_of(orchestration),
         "<= 50"),
        ("overhead at 4096x4096x1024", median_of(overhead[LARGE]), "<= 10%"),
        ("overhead at 2048x2048x512 (default)", median_of(overhead[default]), "<= 50%"),
        ("default mnist, existing home (s)", median(mnist_runs, "total_s"), "<= 10"),
        ("  until the last resolution, 4096x4096x1024", median_of(layering[LARGE]), "-"),
        ("  until the last resolution, 2048x2048x512", median_of(layering[default]), "-"),
        ("  flow run start and end, kept up (ms)", 1000 * median_of(engine), "-"),
        ("  flow wall of an 8x8x8 run, kept up (ms)", 1000 * median_of(floor), "-"),
        ("  that over compute, 4096x4096x1024", median_of(floor) / median_of(computes[LARGE]),
         "-"),
        ("  that over compute, 2048x2048x512", median_of(floor) / median_of(computes[default]),
         "-"),
    ]
    print(f"repeats {args.repeats} (medians); end to end = the command's process, start to exit;"
          f" parts {','.join(p for p in PARTS if p in args.parts)}")
    print(f"{'figure':46s} {'measured':>10s} {'target':>8s}")
    for name, value, target in lines:
        if math.isnan(value):
            continue
        shown = (f"{value:.0%}" if "overhead" in name or "until" in name or "over" in name
                 else f"{value:.2f}")
        print(f"{name:46s} {shown:>10s} {target:>8s}")
    if orchestration:
        print("orchestration per resolution (ms), each:"
              f" {', '.join(f'{1000 * o:.0f}' for o in orchestration)}")
    print("start-up (until the flow can start) and flow seconds, medians:"
          f" new home {fresh.get('startup_s', math.nan):.1f} + {fresh.get('flow_s', math.nan):.1f},"
          f" existing {median(existing, 'startup_s'):.1f} + {median(existing, 'flow_s'):.1f},"
          f" kept up {median(kept, 'startup_s'):.1f} + {median(kept, 'flow_s'):.1f},"
          f" mnist {median(mnist_runs, 'startup_s'):.1f} + {median(mnist_runs, 'flow_s'):.1f}")
    settings = Settings.from_env()
    kernels = {shape: run_kernel("auto", None, math.prod(shape), settings)
               for shape in (default, LARGE)}
    print("compute (warm layered_matmul, all resolutions, the run's kernel), medians:"
          f" 2048x2048x512 {median_of(computes[default]):.3f} s ({kernels[default]}),"
          f" 4096x4096x1024 {median_of(computes[LARGE]):.3f} s ({kernels[LARGE]})")
    print(f"load average after: {load()}")
    if args.json:
        results.update(fresh=fresh, existing=existing, kept=kept, mnist=mnist_runs,
                       orchestration_s=orchestration, flow_run_start_end_s=engine,
                       floor_flow_s=floor,
                       overhead={"x".join(map(str, k)): v for k, v in overhead.items()},
                       overhead_until_last_resolution={
                           "x".join(map(str, k)): v for k, v in layering.items()},
                       compute_s={"x".join(map(str, k)): v for k, v in computes.items()},
                       figures={name: value for name, value, _ in lines}, load_after=load())
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
