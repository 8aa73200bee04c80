"""What a run shows while it runs and after: terminal lines, Prefect artifacts, SVG plots.

Per resolution: a line on the terminal (through the ``layered.progress`` logger, which the
CLI prints), a new version of the run's table artifact, and an update of its progress
artifact. At the end: SVG plots in the run directory and a markdown summary linking them.

Examples
--------
>>> artifact_key("matmul", "My_Run.1")
'matmul-my-run-1'
>>> run_name("mnist", "mnist-20260101-1200-ab12"), run_name("mnist", None)
('mnist-20260101-1200-ab12', 'mnist-new')
>>> decision_line(2, 3, None), decision_line(3, 3, "completed")
('decision after resolution 2/3: go on', 'decision after resolution 3/3: stop (completed)')
>>> progress_line({"resolution": 2, "elapsed_s": 1.5, "bound": 12.0, "max_abs_error": 3.0}, 3)
'[#############-------] resolution 2/3  bound 12  error 3  at 1.50 s'
>>> progress_line({"resolution": 1, "elapsed_s": 0.2, "active_fraction": 0.25, "accuracy": 0.9},
...               4, measures=MNIST_MEASURES)
'[#####---------------] resolution 1/4  active 25.0%  accuracy 0.9000  at 0.20 s'
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from layered.tasks.charts import Chart, line_chart, write_charts

__all__ = [
    "ROW_FIELDS",
    "MNIST_ROW_FIELDS",
    "MATMUL_MEASURES",
    "MNIST_MEASURES",
    "plot_mnist",
    "artifact_key",
    "progress_line",
    "announce",
    "decision_line",
    "run_name",
    "publish_table",
    "start_progress",
    "publish_resolution",
    "plot_matmul",
    "publish_summary",
    "publish_training",
]

ROW_FIELDS = ("resolution", "elapsed_s", "bound", "max_abs_error", "max_abs_error_float64",
              "bit_ops", "flops")
MNIST_ROW_FIELDS = ("resolution", "elapsed_s", "active_fraction", "accuracy", "bit_ops")
#: What a progress line shows after the bar: (label, entry field, format), per pipeline.
MATMUL_MEASURES = (("bound", "bound", ".2g"), ("error", "max_abs_error", ".2g"))
MNIST_MEASURES = (("active", "active_fraction", ".1%"), ("accuracy", "accuracy", ".4f"))
progress_logger = logging.getLogger("layered.progress")


def run_name(kind: str, run_id: str | None) -> str:
    """A run's name in the UI: its id, prefixed by ``kind`` unless it already is (ids made
    by :func:`~layered.data.store.new_run_id` read ``<kind>-<time>-<token>``)."""
    if run_id and run_id.startswith(f"{kind}-"):
        return run_id
    return f"{kind}-{run_id or 'new'}"


def artifact_key(kind: str, run_id: str) -> str:
    """The run's artifact key: its name, in lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", run_name(kind, run_id).lower()).strip("-")


def progress_line(
    entry: Mapping[str, Any], resolutions: int, width: int = 20,
    measures: Sequence[tuple[str, str, str]] = MATMUL_MEASURES,
) -> str:
    """A one-line text bar for a completed resolution, with its ``measures`` (None: left out)."""
    r = int(entry["resolution"])
    filled = round(width * r / resolutions)
    parts = [
        f"[{'#' * filled}{'-' * (width - filled)}] resolution {r}/{resolutions}",
        *(f"{label} {entry[field]:{fmt}}" for label, field, fmt in measures
          if entry.get(field) is not None),
        f"at {entry['elapsed_s']:.2f} s",
    ]
    return "  ".join(parts)


def decision_line(resolution: int, resolutions: int, stopped: str | None) -> str:
    """What the decision after ``resolution`` chose: go on, or stop and why."""
    chose = "go on" if stopped is None else f"stop ({stopped})"
    return f"decision after resolution {resolution}/{resolutions}: {chose}"


def announce(line: str) -> None:
    """Say ``line`` on the terminal (the CLI shows ``layered.progress``) and, at INFO, in
    the flow run's log in the Prefect UI."""
    progress_logger.info(line)
    _run_log().info(line)


def _run_log() -> logging.Logger:
    """A logger whose INFO records go to the Prefect API only (the current run's Logs tab).

    Prefect's run loggers follow ``PREFECT_LOGGING_LEVEL``, which the CLI sets to WARNING
    to keep the terminal to its progress lines: at that level their INFO records would be
    dropped, and the UI would show no logs. This one has its own API handler and does not
    propagate, so the terminal shows each line once (through ``layered.progress``).
    """
    logger = logging.getLogger("layered.run")
    with _RUN_LOG_LOCK:
        if not logger.handlers:
            from prefect.logging.handlers import APILogHandler

            logger.addHandler(APILogHandler())
            logger.setLevel(logging.INFO)
            logger.propagate = False
    return logger


_RUN_LOG_LOCK = threading.Lock()


def start_progress(key: str, done: int, total: int) -> UUID:
    """The run's progress artifact, at ``done`` of ``total`` resolutions."""
    from prefect.artifacts import create_progress_artifact

    artifact_id = create_progress_artifact(
        progress=100.0 * done / total, key=f"{key}-progress",
        description=f"resolutions completed of {total}",
    )
    return cast(UUID, artifact_id)


def publish_resolution(
    key: str, entries: Sequence[Mapping[str, Any]], total: int, progress: UUID,
    fields: Sequence[str] = ROW_FIELDS, what: str = "guaranteed bound and measured error",
) -> None:
    """A table artifact for the latest resolution (all rows so far) and the progress."""
    from prefect.artifacts import update_progress_artifact

    publish_table(key, entries, total, fields, what)
    update_progress_artifact(progress, 100.0 * int(entries[-1]["resolution"]) / total)


def publish_table(
    key: str, entries: Sequence[Mapping[str, Any]], total: int,
    fields: Sequence[str] = ROW_FIELDS, what: str = "guaranteed bound and measured error",
) -> None:
    """A new version of the run's table artifact: a row per resolution so far."""
    from prefect.artifacts import create_table_artifact

    rows = [{name: entry.get(name) for name in fields} for entry in entries]
    r = int(entries[-1]["resolution"])
    create_table_artifact(
        table=rows, key=key, description=f"resolution {r} of {total}: {what} so far",
    )


def plot_matmul(entries: Sequence[Mapping[str, Any]], directory: Path) -> list[Path]:
    """SVG plots of the bound and the measured error against resolution and against time.

    The y axis is symlog: the final resolution's bound and error are exactly 0.
    """
    directory.mkdir(parents=True, exist_ok=True)
    bounds = [e["bound"] for e in entries]
    errors = [e.get("max_abs_error") for e in entries]
    paths = []
    for name, x, label in (
        ("bound_error_by_resolution.svg", [e["resolution"] for e in entries], "resolution"),
        ("bound_error_by_time.svg", [e["elapsed_s"] for e in entries], "elapsed (s)"),
    ):
        series = [("guaranteed bound (max)", x, bounds), ("max |error| (measured)", x, errors)]
        paths.append(line_chart(directory / name, series, label, "|W X - estimate|",
                                y_scale="symlog", integer_x=label == "resolution"))
    return paths


def plot_mnist(entries: Sequence[Mapping[str, Any]], directory: Path) -> list[Path]:
    """An SVG plot of the accuracy and of the fraction of samples still active per
    resolution, side by side."""
    directory.mkdir(parents=True, exist_ok=True)
    res = [e["resolution"] for e in entries]
    charts = [Chart([("", res, [e.get(field) for e in entries])], "resolution", label,
                    integer_x=True)
              for field, label in (("accuracy", "accuracy (all samples)"),
                                   ("active_fraction", "fraction of samples still active"))]
    return [write_charts(directory / "accuracy_active_by_resolution.svg", charts, width=500)]


def publish_summary(
    key: str, summary: Mapping[str, Any], plots: Sequence[Path],
    fields: Sequence[str] = ROW_FIELDS[:5],
) -> None:
    """A markdown artifact: outcome, the resolution table (``fields``), the summary's
    ``final`` figures if it has them, and links to the plots."""
    from prefect.artifacts import create_markdown_artifact

    lines = [
        f"# Run `{summary['run_id']}`: {summary['status']} ({summary['stopped_reason']})",
        "",
        f"Store: `{summary['store']}`",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    for row in summary["resolutions"]:
        lines.append("| " + " | ".join(_cell(row.get(f)) for f in fields) + " |")
    if summary.get("final"):
        lines += ["", "Final: " + ", ".join(f"{k} {_cell(v)}" for k, v in summary["final"].items())]
    lines += ["", "Plots (SVG, saved with the run):", ""]
    lines += [f"- [{p.stem.replace('_', ' ')}]({p.resolve().as_uri()}) `{p}`" for p in plots]
    create_markdown_artifact(
        markdown="\n".join(lines), key=f"{key}-summary", description="run summary"
    )


def publish_training(key: str, summary: Mapping[str, Any]) -> None:
    """A markdown artifact for a training run: every field of its summary."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"# Training run `{summary['run_id']}`: {summary['status']}", "",
             "| field | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in summary.items() if k not in ("run_id", "status")]
    create_markdown_artifact(
        markdown="\n".join(lines), key=f"{key}-summary", description="training summary"
    )


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
