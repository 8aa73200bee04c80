"""Prefect tasks of the layered matmul pipeline: operand preparation, resolutions, decision,
and the measured error.

Each task is a Prefect task run in the flow's process (a few milliseconds of
orchestration) that fans the row blocks of W out over the cluster as plain Dask tasks
(about a millisecond each), whose work is :mod:`layered.tasks.matmul_blocks`. Deadlines
are cooperative: the absolute deadline travels into the task, which stops waiting when it
passes, cancels the blocks still queued and ends as ``Cancelled``.

A resolution's task also submits the next resolution's blocks, each queued behind the
block of the same rows, so the workers go on to resolution ``r + 1`` while the flow
decides about ``r`` (and records its task runs); when the flow stops after ``r``, it
cancels them.

The arithmetic is :func:`layered.layering.resolution_block`; nothing here computes.

Examples
--------
The flow calls, for resolution ``r`` (in its own process; the blocks run on Dask)::

    outcome, ahead = layer_resolution(job, r, previous, staged, deadline_at, None, following)
    # resolution r + 1, whose blocks `ahead` already run:
    outcome, ahead = layer_resolution(job, r + 1, following.previous, following.out,
                                      deadline_at, ahead, None)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from layered.tasks.fanout import Call, Submitted, collect, deadline_state, fan_out, submit
from layered.tasks.matmul_blocks import (
    MatmulJob,
    ResolutionOutcome,
    StagedResolution,
    error_block,
    layer_block,
    layer_split_block,
    split_rows,
)

__all__ = [
    "MatmulJob",
    "StagedResolution",
    "ResolutionOutcome",
    "FollowingResolution",
    "prepare_operands",
    "layer_resolution",
    "measure_errors",
    "decide",
    "STOP_REASONS",
]

STOP_REASONS = ("completed", "deadline", "tolerance")


# --------------------------------------------------------------------------- prepare
@task(task_run_name="prepare-operands", cache_policy=NO_CACHE)
def prepare_operands(job: MatmulJob, deadline: float | None,
                     first: StagedResolution | None = None
                     ) -> tuple[tuple[bool, bool], Submitted | None] | State:
    """Split W's row blocks (and X) on the workers that will run their resolutions.

    Each block lands where :func:`layer_resolution` will send it (``pinned``), which keeps
    the split in memory; nothing is written to disk. With ``first`` (the staged files of
    resolution 1), resolution 1's blocks are submitted too, each to start once every
    split is done (they take the truncation bound from what the splits found): the
    workers go on while the flow records the preparation.

    Returns
    -------
    ((bool, bool), Submitted or None) or State
        Whether W and X had values off their partitions' grids, and resolution 1's blocks
        (with ``first``); or Cancelled, every block cancelled, if the deadline passed.
    """
    if deadline is not None and time.time() >= deadline:
        return deadline_state("the operand preparation", deadline)
    splits = submit([Call(f"split-rows-{a}-{b}", split_rows, (job, (a, b)))
                     for a, b in job.blocks()], pinned=True)
    ahead = None if first is None else submit(
        [Call(f"resolution-1-rows-{a}-{b}", layer_split_block, (job, first, (a, b)))
         for a, b in job.blocks()], after_all=splits)
    results = collect(splits, deadline)
    if results is None:
        if ahead is not None:
            ahead.cancel()
        return deadline_state("the operand preparation", deadline or 0.0)
    return (any(w for w, _ in results), any(x for _, x in results)), ahead


# ------------------------------------------------------------------------ resolutions
@dataclass(frozen=True)
class FollowingResolution:
    """What the next resolution's blocks need before this one is done: its staged files,
    this resolution's estimate (its staged file and final name), which they read, and
    the estimates before it (the same way; for the errors an exact last resolution
    measures, see :func:`~layered.tasks.matmul_blocks.layer_block`)."""

    out: StagedResolution
    previous: tuple[str, str]
    earlier: tuple[tuple[str, str], ...] = ()


@task(task_run_name="resolution-{resolution}", cache_policy=NO_CACHE)
def layer_resolution(
    job: MatmulJob,
    resolution: int,
    previous: tuple[str, str] | None,
    out: StagedResolution,
    deadline: float | None,
    submitted: Submitted | None = None,
    following: FollowingResolution | None = None,
    earlier: tuple[tuple[str, str], ...] = (),
) -> tuple[ResolutionOutcome, Submitted | None] | State:
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
    submitted : Submitted or None
        This resolution's blocks, submitted ahead by the resolution before (else they are
        submitted now).
    following : FollowingResolution or None
        The next resolution, whose blocks are submitted now, each to follow the block of
        the same rows (None after the last resolution).
    earlier : tuple of (str, str)
        The estimates of resolutions ``1 .. r-2`` (staged file and final name), where this
        is the last resolution and its blocks are submitted now (else unused).

    Returns
    -------
    (ResolutionOutcome, Submitted or None) or State
        The outcome, and the next resolution's blocks (to pass on, or to cancel if the run
        stops); or Cancelled, every block of both cancelled, once the deadline passed.
    """
    t0 = time.perf_counter()
    if deadline is not None and time.time() >= deadline:
        if submitted is not None:
            submitted.cancel()
        return deadline_state(f"resolution {resolution}", deadline)
    blocks = submitted or submit(_block_calls(job, resolution, previous, out, earlier),
                                 pinned=True)
    ahead = None if following is None else submit(
        _block_calls(job, resolution + 1, following.previous, following.out,
                     following.earlier), after=blocks)
    outcomes = collect(blocks, deadline)
    if outcomes is None:
        if ahead is not None:
            ahead.cancel()
        return deadline_state(f"resolution {resolution}", deadline or 0.0)
    return ResolutionOutcome.combine(outcomes, time.perf_counter() - t0), ahead


def _block_calls(job: MatmulJob, resolution: int, previous: tuple[str, str] | None,
                 out: StagedResolution, earlier: tuple[tuple[str, str], ...] = ()
                 ) -> list[Call]:
    return [Call(f"resolution-{resolution}-rows-{a}-{b}", layer_block,
                 (job, resolution, previous, out, (a, b), earlier)) for a, b in job.blocks()]


# ------------------------------------------------------------------------- measuring
@task(task_run_name="max-abs-error", cache_policy=NO_CACHE)
def measure_errors(job: MatmulJob, estimates: Sequence[str], reference: str | None = None
                   ) -> tuple[list[float], list[float]]:
    """``max |W_t @ X_t - Ω_r|`` and ``max |W @ X - Ω_r|`` of each estimate file, by row
    blocks on the cluster.

    The float64 one-shot products of the truncated operands and of the operands as given
    are computed block by block and never stored; the flow runs this after the layering,
    off its path. With ``reference``, the estimate of an exact final resolution (its
    bound 0, the operands on their grids and ``job.float64_exact``), no product is
    computed: both products are exact then, hence equal to that estimate, and the errors
    are measured against it.
    """
    blocks = fan_out(
        [Call(f"max-abs-error-rows-{a}-{b}", error_block,
              (job, tuple(estimates), (a, b), reference))
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
