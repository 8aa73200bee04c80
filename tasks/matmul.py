"""Prefect tasks of the layered matmul pipeline: operand preparation, resolutions, decision,
and the measured error.

Each task is a Prefect task run in the flow's process (a few milliseconds of
orchestration) that fans the row blocks of W out over the cluster as plain Dask tasks
(about a millisecond each), whose work is :mod:`layered.tasks.matmul_blocks`. Deadlines
are cooperative: the absolute deadline travels into the task, which stops waiting when it
passes, cancels the blocks still queued and ends as ``Cancelled``.

The arithmetic is :func:`layered.layering.resolution_block`; nothing here computes.

Examples
--------
The flow calls, for resolution ``r`` (in its own process; the blocks run on Dask)::

    outcome = layer_resolution(job, r, previous, staged, deadline_at)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from layered.tasks.fanout import Call, deadline_state, fan_out
from layered.tasks.matmul_blocks import (
    MatmulJob,
    ResolutionOutcome,
    StagedResolution,
    error_block,
    layer_block,
    split_rows,
)

__all__ = [
    "MatmulJob",
    "StagedResolution",
    "ResolutionOutcome",
    "prepare_operands",
    "layer_resolution",
    "measure_errors",
    "decide",
    "STOP_REASONS",
]

STOP_REASONS = ("completed", "deadline", "tolerance")


# --------------------------------------------------------------------------- prepare
@task(task_run_name="prepare-operands", cache_policy=NO_CACHE)
def prepare_operands(job: MatmulJob, deadline: float | None) -> tuple[bool, bool] | State:
    """Split W's row blocks (and X) on the workers that will run their resolutions.

    Each block lands where :func:`layer_resolution` will send it (``pinned``), which keeps
    the split in memory; nothing is written to disk.

    Returns
    -------
    (bool, bool) or State
        Whether W and X had values off their partitions' grids, or Cancelled if the
        deadline passed.
    """
    results = fan_out(
        [Call(f"split-rows-{a}-{b}", split_rows, (job, (a, b))) for a, b in job.blocks()],
        deadline,
        pinned=True,
    )
    if results is None:
        return deadline_state("the operand preparation", deadline or 0.0)
    return any(w for w, _ in results), any(x for _, x in results)


# ------------------------------------------------------------------------ resolutions
@task(task_run_name="resolution-{resolution}", cache_policy=NO_CACHE)
def layer_resolution(
    job: MatmulJob,
    resolution: int,
    previous: tuple[str, str] | None,
    out: StagedResolution,
    deadline: float | None,
) -> ResolutionOutcome | State:
    """Resolution ``r`` of the layered product: ``Ω_r = Ω_{r-1} + group r``, all row blocks.

    Parameters
    ----------
    job : MatmulJob
    resolution : int
        1-based resolution.
    previous : (str, str) or None
        ``Ω_{r-1}``'s staged file and its final name, where the store moves it while this
        resolution runs (None for the first resolution).
    out : StagedResolution
        Staged files to fill.
    deadline : float or None
        Absolute time (``time.time()``) after which the task stops and ends Cancelled.
    """
    t0 = time.perf_counter()
    blocks = fan_out(
        [Call(f"resolution-{resolution}-rows-{a}-{b}", layer_block,
              (job, resolution, previous, out, (a, b))) for a, b in job.blocks()],
        deadline,
        pinned=True,
    )
    if blocks is None:
        return deadline_state(f"resolution {resolution}", deadline or 0.0)
    return ResolutionOutcome.combine(blocks, time.perf_counter() - t0)


# ------------------------------------------------------------------------- measuring
@task(task_run_name="max-abs-error", cache_policy=NO_CACHE)
def measure_errors(job: MatmulJob, estimates: Sequence[str]
                   ) -> tuple[list[float], list[float]]:
    """``max |W_t @ X_t - Ω_r|`` and ``max |W @ X - Ω_r|`` of each estimate file, by row
    blocks on the cluster.

    The float64 one-shot products of the truncated operands and of the operands as given
    are computed block by block and never stored; the flow runs this after the layering,
    off its path.
    """
    blocks = fan_out(
        [Call(f"max-abs-error-rows-{a}-{b}", error_block, (job, tuple(estimates), (a, b)))
         for a, b in job.blocks()],
        None,
    )
    assert blocks is not None  # (no deadline)
    per_estimate = [(max(e[0] for e in errors), max(e[1] for e in errors))
                    for errors in zip(*blocks, strict=True)]
    return [e[0] for e in per_estimate], [e[1] for e in per_estimate]


# --------------------------------------------------------------------------- decision
@task(task_run_name="decide-{resolution}", cache_policy=NO_CACHE)
def decide(
    resolution: int,
    resolutions: int,
    bound: float,
    tolerance: float | None,
    deadline: float | None,
    now: float | None = None,
) -> str | None:
    """Why the job stops after ``resolution``, or None to go on.

    ``"completed"`` after the last resolution, ``"tolerance"`` once the guaranteed bound
    is within ``tolerance``, ``"deadline"`` once the deadline has passed (the job keeps
    this resolution).

    Examples
    --------
    >>> decide.fn(1, 3, bound=5.0, tolerance=10.0, deadline=None)
    'tolerance'
    >>> decide.fn(1, 3, bound=5.0, tolerance=None, deadline=100.0, now=50.0) is None
    True
    """
    if resolution >= resolutions:
        return "completed"
    if tolerance is not None and bound <= tolerance:
        return "tolerance"
    now = time.time() if now is None else now
    if deadline is not None and now >= deadline:
        return "deadline"
    return None
