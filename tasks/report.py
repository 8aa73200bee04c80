"""What a run shows while it runs and after: terminal lines, Prefect artifacts, PNG plots.

Per resolution: a line on the terminal (through the ``layered.progress`` logger, which the
CLI prints), a new version of the run's table artifact, and an update of its progress
artifact. At the end: PNG plots in the run directory and a markdown summary linking them.

Examples
--------
>>> artifact_key("matmul", "My_Run.1")
'matmul-my-run-1'
>>> progress_line({"resolution": 2, "elapsed_s": 1.5, "bound": 12.0, "max_abs_error": 3.0}, 3)
'[#############-------] resolution 2/3  bound 12  error 3  at 1.50 s'
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID

__all__ = [
    "ROW_FIELDS",
    "artifact_key",
    "progress_line",
    "announce",
    "start_progress",
    "publish_resolution",
    "plot_matmul",
    "warm_up_plotting",
    "publish_summary",
]

ROW_FIELDS = ("resolution", "elapsed_s", "bound", "max_abs_error", "bit_ops", "flops")
progress_logger = logging.getLogger("layered.progress")


def artifact_key(kind: str, run_id: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{kind}-{run_id}".lower()).strip("-")


def progress_line(entry: Mapping[str, Any], resolutions: int, width: int = 20) -> str:
    """A one-line text bar for a completed resolution."""
    r = int(entry["resolution"])
    filled = round(width * r / resolutions)
    error = entry.get("max_abs_error")
    parts = [
        f"[{'#' * filled}{'-' * (width - filled)}] resolution {r}/{resolutions}",
        f"bound {entry['bound']:.2g}",
        *([f"error {error:.2g}"] if error is not None else []),
        f"at {entry['elapsed_s']:.2f} s",
    ]
    return "  ".join(parts)


def announce(line: str) -> None:
    """Say ``line`` on the terminal (the CLI shows ``layered.progress``) and in the run log."""
    progress_logger.info(line)
    from prefect.logging import get_run_logger

    get_run_logger().info(line)


def start_progress(key: str, done: int, total: int) -> UUID:
    """The run's progress artifact, at ``done`` of ``total`` resolutions."""
    from prefect.artifacts import create_progress_artifact

    artifact_id = create_progress_artifact(
        progress=100.0 * done / total, key=f"{key}-progress",
        description=f"resolutions completed of {total}",
    )
    return cast(UUID, artifact_id)


def publish_resolution(
    key: str, entries: Sequence[Mapping[str, Any]], total: int, progress: UUID
) -> None:
    """A table artifact for the latest resolution (all rows so far) and the progress."""
    from prefect.artifacts import create_table_artifact, update_progress_artifact

    rows = [{name: entry.get(name) for name in ROW_FIELDS} for entry in entries]
    r = int(entries[-1]["resolution"])
    create_table_artifact(
        table=rows, key=key,
        description=f"resolution {r} of {total}: guaranteed bound and measured error so far",
    )
    update_progress_artifact(progress, 100.0 * r / total)


def warm_up_plotting() -> None:
    """Import matplotlib in a background thread, so that plotting at the end costs no import.

    The flow mostly waits on the cluster, so the import (about 0.5 s) overlaps that wait.
    """
    threading.Thread(
        target=importlib.import_module, args=("matplotlib.figure",), daemon=True
    ).start()


def plot_matmul(entries: Sequence[Mapping[str, Any]], directory: Path) -> list[Path]:
    """PNG plots of the bound and error against resolution and against time."""
    # The object-oriented Figure API with the Agg canvas: no pyplot, no GUI backend, and
    # half the import time.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    directory.mkdir(parents=True, exist_ok=True)
    res = [e["resolution"] for e in entries]
    paths = []
    for name, x, label in (
        ("bound_error_by_resolution.png", res, "resolution"),
        ("bound_error_by_time.png", [e["elapsed_s"] for e in entries], "elapsed (s)"),
    ):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(x, [e["bound"] for e in entries], "o-", label="guaranteed bound (max)")
        errors = [(xi, e["max_abs_error"]) for xi, e in zip(x, entries, strict=True)
                  if e.get("max_abs_error") is not None]
        if errors:
            ax.plot(*zip(*errors, strict=True), "s--", label="max |error| (measured)")
        # symlog: the final resolution's bound and error are exactly 0.
        ax.set_yscale("symlog", linthresh=1.0)
        if x is res:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label)
        ax.set_ylabel("|W X - estimate|")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def publish_summary(key: str, summary: Mapping[str, Any], plots: Sequence[Path]) -> None:
    """A markdown artifact: outcome, the resolution table and links to the plots."""
    from prefect.artifacts import create_markdown_artifact

    lines = [
        f"# Run `{summary['run_id']}`: {summary['status']} ({summary['stopped_reason']})",
        "",
        f"Store: `{summary['store']}`",
        "",
        "| " + " | ".join(ROW_FIELDS[:4]) + " |",
        "|" + "---|" * 4,
    ]
    for row in summary["resolutions"]:
        lines.append("| " + " | ".join(_cell(row.get(f)) for f in ROW_FIELDS[:4]) + " |")
    lines += ["", "Plots (PNG, saved with the run):", ""]
    lines += [f"- [{p.stem.replace('_', ' ')}]({p.resolve().as_uri()}) `{p}`" for p in plots]
    create_markdown_artifact(
        markdown="\n".join(lines), key=f"{key}-summary", description="run summary"
    )


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
