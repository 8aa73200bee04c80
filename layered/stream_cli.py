"""``layered run stream``: the options, and the run, of the stream experiment's command.

Importing this module imports neither prefect nor distributed (the ``layered`` command
builds its parser before it knows which pipeline runs); the flow is imported once the
Prefect API is chosen.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_arguments(parser)
>>> args = parser.parse_args(["--simulate", "--slowdown", "1=3", "--deadlines", "5", "10"])
>>> args.simulate, args.slowdown, args.deadlines
(True, [('1', 3.0)], [5.0, 10.0])
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from layered.layering.stream import DEADLINE_RULES, STREAM_LAYERINGS
from layered.settings import REAL_DEFAULTS, Settings

__all__ = ["add_arguments", "check_options", "run_stream_command", "summary_table"]


def _slowdown(text: str) -> tuple[str, float]:
    name, sep, factor = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError(text)
        return name, float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--slowdown takes NAME=FACTOR (a Dask worker name and a number), got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stream experiment's own options (``--json``, ``--address``, ``--store`` and
    ``--run-id`` are the command's common ones)."""
    d = REAL_DEFAULTS
    parser.add_argument("--simulate", action="store_true",
                        help="run the model (the paper's defaults), not the cluster")
    parser.add_argument("--jobs", type=int,
                        help=f"number of jobs (default 10000 simulated, {d.jobs} real)")
    parser.add_argument("--rate", type=float, default=0.01, help="arrivals per slot (0.01)")
    parser.add_argument("--tasks", type=int, default=1000,
                        help="tasks per job K, the rows of a real job (1000)")
    parser.add_argument("--workers", type=int, default=5,
                        help="simulated workers P (a real run uses the cluster's) (5)")
    parser.add_argument("--gamma", type=float, default=1.0,
                        help="weight of E[T^2] in the load split (1)")
    parser.add_argument("--layering", choices=STREAM_LAYERINGS, default=STREAM_LAYERINGS[0],
                        help="4 equal rounds, or the anti-diagonal 3 (default %(default)s)")
    parser.add_argument("--pipelined", action="store_true",
                        help="simulate without a barrier between resolutions")
    parser.add_argument("--rule", choices=DEADLINE_RULES, default="published",
                        help="deadline rule (default %(default)s)")
    parser.add_argument("--deadlines", type=float, nargs="+", metavar="D",
                        help="deadlines in slots (default 0..30 simulated,"
                        f" {' '.join(f'{x:g}' for x in d.deadlines)} real)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every draw (0)")
    parser.add_argument("--time-scale", type=float, default=d.time_scale, metavar="SECONDS",
                        help=f"seconds per slot of a real run ({d.time_scale})")
    parser.add_argument("--slowdown", type=_slowdown, action="append", default=[],
                        metavar="NAME=FACTOR",
                        help="slow Dask worker NAME down by FACTOR (repeatable)")
    parser.add_argument("--cols", type=int, default=d.cols,
                        help=f"columns of synthetic jobs ({d.cols})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="MNIST directory: real jobs score its test images")
    parser.add_argument("--n-workers", type=int, help="LocalCluster workers")


def summary_table(summary: dict[str, Any]) -> str:
    """Mean delay and success at D = 10 slots (or the first deadline), as text lines.

    Examples
    --------
    >>> print(summary_table({"mode": "simulate", "deadlines": [10],
    ...     "resolutions": [{"resolution": 1, "mean_delay": 12.5, "success": [1.0]}],
    ...     "no_layering": {"mean_delay": 33.0, "success": [0.7]}}))
      resolution   mean delay  success@10
               1   12.500 slots       1.000
     no layering   33.000 slots       0.700
    """
    slots = summary.get("deadlines_slots", summary["deadlines"])
    shown = slots.index(10) if 10 in slots else 0
    unit = "s" if summary["mode"] == "dask" else "slots"
    lines = [f"{'resolution':>12} {'mean delay':>12} {'success@' + format(slots[shown], 'g'):>11}"]
    rows = [*summary["resolutions"], {"resolution": "no layering", **summary["no_layering"]}]
    for row in rows:
        lines.append(f"{row['resolution']!s:>12} {row['mean_delay']:>8.3f} {unit:<5}"
                     f" {row['success'][shown]:>11.3f}")
    return "\n".join(lines)


def check_options(args: argparse.Namespace) -> None:
    """Refuse options the experiment cannot run with, naming the option.

    Raises
    ------
    ValueError
        ``--jobs``, ``--tasks``, ``--workers``, ``--cols`` or ``--n-workers`` below 1,
        ``--rate``, ``--time-scale`` or a ``--slowdown`` factor not a finite number > 0,
        ``--gamma`` or a deadline not a finite number >= 0, or a ``--data-dir`` that is
        not a directory.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser)
    >>> check_options(parser.parse_args(["--simulate", "--deadlines", "-3"]))
    Traceback (most recent call last):
    ...
    ValueError: --deadlines: every deadline must be a finite number >= 0 (slots), got -3
    """
    for option, value in (("--jobs", args.jobs), ("--tasks", args.tasks),
                          ("--workers", args.workers), ("--cols", args.cols),
                          ("--n-workers", args.n_workers)):
        if value is not None and value < 1:
            raise ValueError(f"{option}: must be an integer >= 1, got {value}")
    for option, number in (("--rate", args.rate), ("--time-scale", args.time_scale),
                           *(("--slowdown", factor) for _, factor in args.slowdown)):
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{option}: must be a finite number > 0, got {number:g}")
    if not (math.isfinite(args.gamma) and args.gamma >= 0):
        raise ValueError(f"--gamma: must be a finite number >= 0, got {args.gamma:g}")
    for deadline in args.deadlines or ():
        if not (math.isfinite(deadline) and deadline >= 0):
            raise ValueError("--deadlines: every deadline must be a finite number >= 0"
                             f" (slots), got {deadline:g}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir: {args.data_dir} is not a directory")


def run_stream_command(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Run the stream flow for parsed options; return its summary.

    The options are checked first (:func:`check_options`), before anything starts. The
    flow writes ``summary.json`` and the plots to ``<store>/<run id>``.
    """
    from layered.data.store import new_run_id
    from layered.server import prefect_api, wait_ready

    check_options(args)
    settings = settings.replace(store=args.store, dask_address=args.address,
                                n_workers=args.n_workers)
    out = Path(settings.store) / (args.run_id or new_run_id("stream"))
    with prefect_api(settings) as server:
        wait_ready(server, settings.server_timeout_s)
        from prefect.logging.handlers import APILogWorker
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from layered.flows.stream import stream_flow

        # Were prefect imported before the API was chosen, its settings would be stale.
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            summary = stream_flow(
                simulate=args.simulate, jobs=args.jobs, rate=args.rate, tasks=args.tasks,
                workers=args.workers, gamma=args.gamma, layering=args.layering,
                pipelined=args.pipelined, rule=args.rule, deadlines=args.deadlines,
                seed=args.seed, time_scale=args.time_scale,
                slowdowns=dict(args.slowdown) or None, cols=args.cols,
                data_dir=args.data_dir, address=settings.dask_address,
                n_workers=settings.n_workers, out_dir=str(out),
            )
            APILogWorker.drain_all(timeout=5)  # send the run's logs while the API answers
    return summary
