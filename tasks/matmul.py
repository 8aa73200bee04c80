"""Prefect tasks of the layered matmul pipeline: operand preparation, resolutions, decision.

Each task is worth seconds of work: it runs on a Dask worker and fans the row blocks of W
out over the cluster with plain Dask (the worker's client), because a Prefect task costs
about 0.2 s on Dask and a block a few milliseconds. Workers read their rows from the run
directory (memory-mapped ``.npy``), so operands are never re-sent per resolution, and write
their rows of the result into files the flow staged. Deadlines are cooperative: the
absolute deadline travels into the task, which stops waiting when it passes, cancels the
blocks still queued and ends as ``Cancelled``.

The arithmetic is :func:`layered.layering.resolution_block`; nothing here computes.

Examples
--------
The flow calls, for resolution ``r``::

    future = layer_resolution.submit(job, r, previous, staged, deadline_at)
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from layered.data.operands import ArraySource, file_stamp, load_split, save_digits
from layered.layering import Ordering, Partition, SplitOperand, resolution_block
from layered.tasks.fanout import Call, deadline_state, fan_out

__all__ = [
    "MatmulJob",
    "StagedResolution",
    "ResolutionOutcome",
    "prepare_operands",
    "layer_resolution",
    "decide",
    "STOP_REASONS",
]

STOP_REASONS = ("completed", "deadline", "tolerance")


@dataclass(frozen=True)
class MatmulJob:
    """What every block of a layered ``W @ X`` needs, as paths and small value objects.

    Attributes
    ----------
    w, x : ArraySource
        The operands (read by rows).
    pw, px : Partition
    order : Ordering
    w_digits, x_digits : tuple of str
        One digit file per component (written by :func:`split_operands`).
    block_rows : int
        Rows of W per Dask block.
    reference : str or None
        The truncated one-shot product ``W_t @ X_t``, when measured.
    reference_float64 : str or None
        The float64 one-shot product ``W @ X`` of the operands as given, when measured.
    truncation : float
        Bound on ``|W @ X - W_t @ X_t|`` (0 for operands on their partitions' grids).
    reuse : str
        Product plan of every block (see :mod:`layered.layering.plan`); a block keeps the
        products it computed early on its worker until the resolution that adds them.
    """

    w: ArraySource
    x: ArraySource
    pw: Partition
    px: Partition
    order: Ordering
    w_digits: tuple[str, ...]
    x_digits: tuple[str, ...]
    block_rows: int
    reference: str | None = None
    reference_float64: str | None = None
    truncation: float = 0.0
    reuse: str = "auto"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.w.shape[0], self.w.shape[1], self.x.shape[1]

    def blocks(self, rows: int | None = None) -> list[tuple[int, int]]:
        """Row ranges ``(start, stop)`` covering ``rows`` (default: W's rows)."""
        total = self.w.shape[0] if rows is None else rows
        return [(s, min(s + self.block_rows, total)) for s in range(0, total, self.block_rows)]


@dataclass(frozen=True)
class StagedResolution:
    """Staged files a resolution's blocks fill: the estimate and its bound (M x N each)."""

    estimate: str
    bound: str


@dataclass(frozen=True)
class ResolutionOutcome:
    """What one resolution task returns to the flow (its arrays are in the staged files).

    Attributes
    ----------
    resolution : int
    bound : float
        Largest guaranteed elementwise bound on ``|W_t @ X_t - Ω_r|``.
    static_bound : float
        The method's static bound for this resolution.
    max_abs_error : float or None
        ``max |W_t @ X_t - Ω_r|`` when the reference product was computed.
    bit_ops, flops : int
        Cost of the resolution (all blocks).
    exact : bool
        Whether every block was exact arithmetic.
    task_s : float
        Wall time of the fan-out inside the task (0 for one block).
    max_abs_error_float64 : float or None
        ``max |W @ X - Ω_r|`` against the float64 one-shot product of the operands as
        given, when it was computed.
    """

    resolution: int
    bound: float
    static_bound: float
    max_abs_error: float | None
    bit_ops: int
    flops: int
    exact: bool
    task_s: float = 0.0
    max_abs_error_float64: float | None = None

    @classmethod
    def combine(cls, blocks: Sequence[ResolutionOutcome], task_s: float) -> ResolutionOutcome:
        """The outcome of a whole resolution from those of its row blocks."""
        errors = [b.max_abs_error for b in blocks if b.max_abs_error is not None]
        float64 = [b.max_abs_error_float64 for b in blocks
                   if b.max_abs_error_float64 is not None]
        return cls(
            resolution=blocks[0].resolution,
            bound=max(b.bound for b in blocks),
            static_bound=blocks[0].static_bound,
            max_abs_error=max(errors) if errors else None,
            bit_ops=sum(b.bit_ops for b in blocks),
            flops=sum(b.flops for b in blocks),
            exact=all(b.exact for b in blocks),
            task_s=task_s,
            max_abs_error_float64=max(float64) if float64 else None,
        )


# --------------------------------------------------------------------------- prepare
def _split_block(
    source: ArraySource, partition: Partition, name: str, paths: tuple[str, ...],
    rows: tuple[int, int],
) -> bool:
    """Split rows of an operand into digit files; True if any value was off the grid."""
    block = source.rows(*rows)
    partition = partition.rows(*rows)
    save_digits(partition.components(block, name=name), paths, rows)
    if block.dtype.kind in "iu" and partition.points[-1] <= 0:
        return False  # integers are on every grid of step 2**p, p <= 0
    return bool(np.any(partition.truncate(block) != block))


@functools.lru_cache(maxsize=2)
def _truncated(source: ArraySource, partition: Partition, stamp: tuple[int, int]) -> np.ndarray:
    # Cached per worker process: every block of the reference product needs all of X.
    return partition.truncate(source.read())


@functools.lru_cache(maxsize=1)
def _as_given(source: ArraySource, stamp: tuple[int, int]) -> np.ndarray:
    # Cached per worker process, as _truncated: every block needs all of X.
    return source.read().astype(np.float64)


def _reference_block(job: MatmulJob, out: str, rows: tuple[int, int]) -> None:
    """Rows of the one-shot float64 products of the truncated and of the given operands."""
    w = job.w.rows(*rows)
    x_t = _truncated(job.x, job.px, file_stamp(job.x.path))
    products = [(out, job.pw.rows(*rows).truncate(w) @ x_t)]
    if job.reference_float64 is not None:
        x = _as_given(job.x, file_stamp(job.x.path))
        products.append((job.reference_float64, w.astype(np.float64) @ x))
    for path, product in products:
        target = np.load(path, mmap_mode="r+")
        target[rows[0] : rows[1]] = product
        target.flush()


@task(task_run_name="prepare-operands", cache_policy=NO_CACHE)
def prepare_operands(
    job: MatmulJob, split: bool, reference: str | None, deadline: float | None
) -> tuple[bool, bool] | State:
    """Split W and X into their digit files and compute the reference product, by blocks.

    Parameters
    ----------
    job : MatmulJob
        ``w_digits`` and ``x_digits`` name the (staged) digit files to fill.
    split : bool
        Whether to split (False when a resumed run has its digits).
    reference : str or None
        Staged file for ``W_t @ X_t``, or None to skip it.
    deadline : float or None

    Returns
    -------
    (bool, bool) or State
        Whether W and X had values off their partitions' finest grids (False, False when
        not split), or Cancelled if the deadline passed.
    """
    calls = []
    if split:
        for source, partition, name, paths in (
            (job.w, job.pw, "W", job.w_digits), (job.x, job.px, "X", job.x_digits)
        ):
            calls += [Call(f"split-{name}-rows-{a}-{b}", _split_block,
                           (source, partition, name, paths, (a, b)))
                      for a, b in job.blocks(source.shape[0])]
    n_split = len(calls)
    if reference is not None:
        calls += [Call(f"reference-rows-{a}-{b}", _reference_block, (job, reference, (a, b)))
                  for a, b in job.blocks()]
    results = fan_out(calls, deadline)
    if results is None:
        return deadline_state("the operand preparation", deadline or 0.0)
    off_w = any(results[: len(job.blocks())]) if split else False
    off_x = any(results[len(job.blocks()) : n_split]) if split else False
    return off_w, off_x


# ------------------------------------------------------------------------ resolutions
@functools.lru_cache(maxsize=2)
def _x_split(paths: tuple[str, ...], partition: Partition, stamps: tuple) -> SplitOperand:
    # Cached per worker process: X's digits, kernel conversions and column statistics are
    # made once and serve every block of every resolution the worker runs.
    return load_split(paths, partition, "X")


#: Per worker process: products a row block computed early for a later resolution (the
#: product plans of :mod:`layered.layering.plan`), by (digit files, rows) -> (resolution
#: they are for, products). Losing them (another worker, a restart) costs only reuse.
_KEPT: OrderedDict[tuple[object, ...], tuple[int, dict]] = OrderedDict()
_KEPT_ENTRIES = 1024


def _layer_block(
    job: MatmulJob, resolution: int, previous: str | None, out: StagedResolution,
    rows: tuple[int, int],
) -> ResolutionOutcome:
    start, stop = rows
    w = load_split(job.w_digits, job.pw, "W", rows)
    x = _x_split(job.x_digits, job.px, tuple(file_stamp(p) for p in job.x_digits))
    prev = None if previous is None else np.load(previous, mmap_mode="r")[start:stop]
    key = (job.w_digits, job.x_digits, rows)
    for_resolution, kept = _KEPT.pop(key, (0, {}))
    res, kept = resolution_block(
        w, x, job.order, resolution, prev, truncation=job.truncation,
        kept=kept if for_resolution == resolution else None, reuse=job.reuse,
    )
    if kept and resolution < job.order.resolutions:
        _KEPT[key] = (resolution + 1, kept)
        while len(_KEPT) > _KEPT_ENTRIES:
            _KEPT.popitem(last=False)
    for path, values in ((out.estimate, res.estimate), (out.bound, res.bound)):
        target = np.load(path, mmap_mode="r+")
        target[start:stop] = values
        target.flush()
    error, error_float64 = (
        None if path is None
        else float(np.max(np.abs(np.load(path, mmap_mode="r")[start:stop] - res.estimate)))
        for path in (job.reference, job.reference_float64)
    )
    return ResolutionOutcome(
        resolution, res.max_bound, res.static_bound, error, res.bit_ops, res.flops, res.exact,
        max_abs_error_float64=error_float64,
    )


@task(task_run_name="resolution-{resolution}", cache_policy=NO_CACHE)
def layer_resolution(
    job: MatmulJob,
    resolution: int,
    previous: str | None,
    out: StagedResolution,
    deadline: float | None,
) -> ResolutionOutcome | State:
    """Resolution ``r`` of the layered product: ``Ω_r = Ω_{r-1} + group r``, all row blocks.

    Parameters
    ----------
    job : MatmulJob
    resolution : int
        1-based resolution.
    previous : str or None
        Committed ``Ω_{r-1}`` file (None for the first resolution).
    out : StagedResolution
        Staged files to fill.
    deadline : float or None
        Absolute time (``time.time()``) after which the task stops and ends Cancelled.
    """
    t0 = time.perf_counter()
    blocks = fan_out(
        [Call(f"resolution-{resolution}-rows-{a}-{b}", _layer_block,
              (job, resolution, previous, out, (a, b))) for a, b in job.blocks()],
        deadline,
        pinned=True,
    )
    if blocks is None:
        return deadline_state(f"resolution {resolution}", deadline or 0.0)
    return ResolutionOutcome.combine(blocks, time.perf_counter() - t0)


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
