"""What a stream run leaves behind: the summary JSON, PNG plots and Prefect artifacts.

Two plots: the delay distribution (empirical CDF) of each resolution and of no layering,
and the success rate against the deadline. A real run's plots also show, dashed, the
simulation of its very same draws, so what the cluster adds is visible at a glance.

Examples
--------
>>> row = {"resolution": 2, "mean_delay": 19.8, "success": [0.5, 0.9]}
>>> resolution_table(row, [0, 10])
[{'deadline': 0, 'success': 0.5}, {'deadline': 10, 'success': 0.9}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layered.layering.stream import StreamOutcome

__all__ = [
    "DELAY_JOBS",
    "plot_delay_cdf",
    "plot_success",
    "publish_stream_artifacts",
    "resolution_table",
    "write_summary",
]

#: METHOD §5 reports the delay distribution of the first 1000 jobs.
DELAY_JOBS = 1000


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the summary as JSON, atomically (a reader never sees a half-written file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, target)
    return target


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_delay_cdf(
    layered: StreamOutcome,
    one_shot: StreamOutcome,
    path: Path,
    unit: str,
    reference: tuple[StreamOutcome, StreamOutcome] | None = None,
    jobs: int = DELAY_JOBS,
) -> Path:
    """Empirical CDF of each resolution's delay (first ``jobs`` jobs), and of no layering.

    ``reference`` (a simulation of the same draws) is drawn dashed in the same colours.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    runs = [(layered, one_shot, "-", "")]
    if reference is not None:
        runs.append((reference[0], reference[1], "--", " (simulated)"))
    for lay, one, style, suffix in runs:
        curves = [(f"resolution {r + 1}", lay.delays[:jobs, r]) for r in range(lay.delays.shape[1])]
        curves.append(("no layering", one.delays[:jobs, -1]))
        for colour, (label, values) in enumerate(curves):
            x = np.sort(values)
            y = np.arange(1, x.size + 1) / x.size
            ax.step(x, y, style, where="post", color=f"C{colour}", label=label + suffix)
    ax.set_xlabel(f"delay ({unit})")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"Delay distribution (first {min(jobs, layered.delays.shape[0])} jobs)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def plot_success(
    summary: Mapping[str, Any], path: Path, unit: str, reference: Mapping[str, Any] | None = None
) -> Path:
    """Success rate against the deadline, per resolution and for no layering.

    ``reference`` (a summary of the simulation of the same draws) is drawn dashed.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    runs = [(summary, "o-", "")]
    if reference is not None:
        runs.append((reference, "x--", " (simulated)"))
    for data, style, suffix in runs:
        d = data["deadlines"]
        rows = [(f"resolution {row['resolution']}", row["success"]) for row in data["resolutions"]]
        rows.append(("no layering", data["no_layering"]["success"]))
        for colour, (label, rates) in enumerate(rows):
            ax.plot(d, rates, style, color=f"C{colour}", markersize=3, label=label + suffix)
    ax.set_xlabel(f"deadline D ({unit})")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Success against the deadline ({summary.get('rule', 'published')} rule)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def resolution_table(row: Mapping[str, Any], deadlines: Sequence[float]) -> list[dict[str, Any]]:
    """One resolution's success rate at each deadline, as table rows."""
    return [
        {"deadline": d, "success": rate} for d, rate in zip(deadlines, row["success"], strict=True)
    ]


def publish_stream_artifacts(key: str, summary: Mapping[str, Any], plots: Sequence[Path]) -> None:
    """A table artifact per resolution (and for no layering) and a markdown summary."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    unit = "s" if summary["mode"] == "dask" else "slots"
    rows = [*summary["resolutions"], {"resolution": "no layering", **summary["no_layering"]}]
    for row in rows:
        name = str(row["resolution"]).replace(" ", "-")
        create_table_artifact(
            table=resolution_table(row, summary["deadlines"]),
            key=f"{key}-resolution-{name}",
            description=(
                f"resolution {row['resolution']}: mean delay {row['mean_delay']:.4g} {unit};"
                f" success rate per deadline ({summary.get('rule', 'published')} rule)"
            ),
        )
    deadlines = list(summary["deadlines"])
    # The paper's table quotes D = 10 slots; otherwise show the longest deadline.
    shown = deadlines.index(10) if unit == "slots" and 10 in deadlines else len(deadlines) - 1
    lines = [
        f"# Stream run ({summary['mode']}, {summary.get('rule', 'published')} deadline rule)",
        "",
        f"| resolution | mean delay ({unit}) | success at D = {deadlines[shown]:g} {unit} |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['resolution']} | {r['mean_delay']:.4g} | {r['success'][shown]:.3f} |" for r in rows
    ]
    lines += ["", "Plots:", ""]
    lines += [f"- [{p.stem.replace('_', ' ')}]({p.resolve().as_uri()}) `{p}`" for p in plots]
    create_markdown_artifact(
        markdown="\n".join(lines), key=f"{key}-summary", description="stream run summary"
    )
