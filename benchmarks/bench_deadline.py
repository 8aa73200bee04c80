"""Deadline precision of ``matmul_flow``: how late after its deadline a run stops.

Runs the matmul flow ``--runs`` times on a local Dask cluster (two process workers, as
``layered run matmul`` starts it), each a fresh run with a deadline drawn uniformly over
the time a whole run takes (measured after a warm-up run), so deadlines fall in every
phase (operand preparation, inside a resolution, between resolutions). For every run it
measures:

- ``late``: the manifest's ``stopped_at - deadline_at``, when the flow stopped layering;
- ``tail``: the end of the run's last block on the cluster minus the deadline (blocks
  running at the deadline finish; Dask cannot interrupt them), from Dask's task stream;

and prints their distributions (min, median, p90, max) in seconds and in blocks: ``late``
in units of the median duration of a resolution's row block, ``tail`` in units of the
median duration of blocks of the kind that ended last (a resolution block, or a split
block of the operand preparation), all from the task stream. The pipeline
promises both within one block.

Usage::

    python benchmarks/bench_deadline.py [--runs 20] [--shape 2048 2048 512]
                                        [--block-rows 256] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from layered.settings import Settings

# Quiet: the table below is the output (set before anything imports prefect).
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p90": p90,
            "max": ordered[-1]}


BLOCK_KINDS = ("resolution", "split")


def block_spans(client: Any, since: float, until: float) -> list[tuple[str, float, float]]:
    """``(kind, start, stop)`` of every block computed between ``since`` and ``until``."""
    spans = []
    for task in client.get_task_stream(start=since):
        kind = str(task["key"]).split("-")[0]
        if kind in BLOCK_KINDS:
            spans += [(kind, s["start"], s["stop"]) for s in task["startstops"]
                      if s["action"] == "compute" and s["start"] <= until]
    return spans


def timed_run(flow: Any, client: Any, store: Path, run_id: str, shape: list[int],
              deadline: float | None, block_rows: int) -> dict[str, Any]:
    started = time.time()
    flow(shape=shape, seed=0, run_id=run_id, deadline=deadline, block_rows=block_rows,
         store=str(store), return_state=True)
    time.sleep(2.0)  # blocks still running at the deadline end and reach the task stream
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    spans = block_spans(client, started, time.time())
    row = {"deadline_s": deadline, "stopped_reason": manifest["stopped_reason"],
           "kept": len(manifest["resolutions"]), "wall_s": manifest["stopped_at"] - started,
           "blocks": spans}
    if deadline is not None:
        row["late_s"] = manifest["stopped_at"] - manifest["deadline_at"]
        # no block ran when the deadline came before any started: nothing ran after it
        last_kind, _, last_stop = max(spans, key=lambda span: span[2], default=(
            "resolution", 0.0, manifest["deadline_at"]))
        row.update(tail_s=last_stop - manifest["deadline_at"], last_kind=last_kind)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=list(Settings().shape))
    parser.add_argument("--block-rows", type=int, default=Settings().block_rows)
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn deadlines")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        settings = Settings.from_env().replace(prefect_home=Path(tmp) / "prefect",
                                               store=Path(tmp) / "runs")
        from layered.server import prefect_api, wait_ready

        api = stack.enter_context(prefect_api(settings))  # before prefect is imported
        from distributed import Client

        from layered.cluster import dask_task_runner, local_cluster
        from layered.flows.matmul import matmul_flow

        cluster = stack.enter_context(local_cluster(settings))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        wait_ready(api, settings.server_timeout_s)
        client.get_task_stream()  # starts recording
        flow = matmul_flow.with_options(task_runner=dask_task_runner(settings,
                                                                     cluster.scheduler_address))
        for run_id in ("warm-up", "full"):
            full = timed_run(flow, client, settings.store, run_id, args.shape, None,
                             args.block_rows)
        rng = random.Random(args.seed)
        rows = [timed_run(flow, client, settings.store, f"d{i}", args.shape,
                          rng.uniform(0.0, full["wall_s"]), args.block_rows)
                for i in range(args.runs)]
    block = {kind: statistics.median(stop - start for row in [full, *rows]
                                     for k, start, stop in row["blocks"] if k == kind)
             for kind in BLOCK_KINDS}
    for row in rows:
        if "late_s" in row:
            row["late_blocks"] = row["late_s"] / block["resolution"]
            row["tail_blocks"] = row["tail_s"] / block[row["last_kind"]]
    report(args, full, rows, block)


def report(args: argparse.Namespace, full: dict[str, Any], rows: list[dict[str, Any]],
           block: dict[str, float]) -> None:
    print(f"shape {args.shape}, block rows {args.block_rows}: a whole run stops after"
          f" {full['wall_s']:.2f} s; median block: " + ", ".join(
              f"{kind} {seconds * 1000:.0f} ms" for kind, seconds in block.items()))
    print(f"{'deadline s':>10s} {'stopped':>9s} {'kept':>5s} {'late ms':>8s} {'blocks':>7s}"
          f" {'tail ms':>8s} {'blocks':>7s} {'last block':>11s}")
    for row in (row for row in rows if "late_s" in row):
        print(f"{row['deadline_s']:10.2f} {row['stopped_reason']:>9s} {row['kept']:5d}"
              f" {row['late_s'] * 1000:8.0f} {row['late_blocks']:7.2f}"
              f" {row['tail_s'] * 1000:8.0f} {row['tail_blocks']:7.2f} {row['last_kind']:>11s}")
    stopped = [row for row in rows if row["stopped_reason"] == "deadline"]
    summary = {}
    for name in ("late", "tail") if stopped else ():
        seconds = quantiles([row[f"{name}_s"] for row in stopped])
        blocks = quantiles([row[f"{name}_blocks"] for row in stopped])
        summary[name] = {"seconds": seconds, "blocks": blocks}
        print(f"{name} over {len(stopped)} deadline stops: " + ", ".join(
            f"{k} {seconds[k] * 1000:.0f} ms ({blocks[k]:.2f} blocks)" for k in seconds))
    if args.json:
        args.json.write_text(json.dumps({
            "shape": args.shape, "block_rows": args.block_rows, "median_block_s": block,
            "full_run_s": full["wall_s"], "summary": summary,
            "runs": [{k: v for k, v in row.items() if k != "blocks"} for row in rows],
        }, indent=2))


if __name__ == "__main__":
    main()
