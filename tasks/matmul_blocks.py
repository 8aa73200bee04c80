"""The work of one row block of the layered matmul pipeline, as it runs on a Dask worker.

Imports numpy and the library only (no Prefect, no Dask), so that workers start quickly
and preload it (:mod:`layered.cluster`). The Prefect tasks that fan these blocks out are
:mod:`layered.tasks.matmul`. Workers read their rows from the run directory
(memory-mapped ``.npy``), so operands are never re-sent per resolution, and write their
rows of the result into files the flow staged.

Each worker splits the row blocks of W it is given once (in the operand preparation)
and keeps them in memory, within a share of its memory limit, for every later
resolution; a block it does not hold (another worker took it, a restarted worker, a
resumed run, an operand larger than the share) is split again from the operand file,
which gives the same digits. X is split once per worker. Nothing derived from the
operands is written to disk.

The arithmetic is :func:`layered.layering.resolution_block`; nothing here computes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from layered.data.operands import ArraySource, file_stamp
from layered.data.store import write_rows
from layered.layering import (
    Ordering,
    Partition,
    SplitOperand,
    prepare_block,
    resolution_block,
)
from layered.layering.product import float64_exact, truncation_bound
from layered.tasks.kernels import worker_kernel

__all__ = [
    "MatmulJob",
    "StagedResolution",
    "ResolutionOutcome",
    "split_rows",
    "layer_block",
    "layer_split_block",
    "error_block",
]


@dataclass(frozen=True)
class MatmulJob:
    """What every block of a layered ``W @ X`` needs, as paths and small value objects.

    Attributes
    ----------
    w, x : ArraySource
        The operands (read by rows).
    pw, px : Partition
    order : Ordering
    block_rows : int
        Rows of W per Dask block.
    truncation : float
        Bound on ``|W @ X - W_t @ X_t|`` (0 for operands on their partitions' grids).
    float64_exact : bool
        Whether the float64 one-shot ``W @ X`` is exact (operands on their grids, and
        small enough: :func:`~layered.layering.product.float64_exact`).
    max_abs : (float, float)
        ``max |W|`` and ``max |X|``, which :meth:`on_grids` takes the two above from.
    reuse : str
        Product plan of every block (see :mod:`layered.layering.plan`); a block keeps the
        products it computed early on its worker until the resolution that adds them.
    kernel, device : str
        Product kernel and device, by name (see :func:`layered.layering.resolve_kernel`),
        resolved on each worker: a worker with a GPU uses it under ``"auto"``.
    """

    w: ArraySource
    x: ArraySource
    pw: Partition
    px: Partition
    order: Ordering
    block_rows: int
    truncation: float = 0.0
    float64_exact: bool = False
    max_abs: tuple[float, float] = (0.0, 0.0)
    reuse: str = "auto"
    kernel: str = "auto"
    device: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.w.shape[0], self.w.shape[1], self.x.shape[1]

    def on_grids(self, off_w: bool, off_x: bool) -> MatmulJob:
        """This job with the truncation bound and float64 exactness of operands that have
        values off their partitions' grids (``off_w``, ``off_x``) or not."""
        k = self.shape[1]
        return dataclasses.replace(
            self,
            truncation=truncation_bound(
                k, _coarsest_step(self.pw) if off_w else 0.0,
                _coarsest_step(self.px) if off_x else 0.0, *self.max_abs),
            float64_exact=not (off_w or off_x) and float64_exact(
                k, _finest_step(self.pw), _finest_step(self.px), *self.max_abs),
        )

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
        ``max |W_t @ X_t - Ω_r|``, measured after the layering (:func:`error_block`);
        None until then.
    bit_ops, flops : int
        Cost of the resolution (all blocks).
    exact : bool
        Whether every block was exact arithmetic.
    task_s : float
        Wall time of the fan-out inside the task (0 for one block).
    max_abs_error_float64 : float or None
        ``max |W @ X - Ω_r|`` against the float64 one-shot product of the operands as
        given, measured with ``max_abs_error``; None until then.
    earlier_errors : tuple of float, or None
        At an exact last resolution (see :func:`layer_block`): ``max |Ω_R - Ω_r|`` of
        every earlier resolution ``r``, which are both errors then; else None.
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
    earlier_errors: tuple[float, ...] | None = None

    @classmethod
    def combine(cls, blocks: Sequence[ResolutionOutcome], task_s: float) -> ResolutionOutcome:
        """The outcome of a whole resolution from those of its row blocks (errors are
        measured after the layering, so none is known yet, unless every block of an exact
        last resolution measured those of the earlier ones)."""
        earlier = [b.earlier_errors for b in blocks]
        return cls(
            resolution=blocks[0].resolution,
            bound=max(b.bound for b in blocks),
            static_bound=blocks[0].static_bound,
            max_abs_error=None,
            bit_ops=sum(b.bit_ops for b in blocks),
            flops=sum(b.flops for b in blocks),
            exact=all(b.exact for b in blocks),
            task_s=task_s,
            earlier_errors=None if any(e is None for e in earlier) else tuple(
                max(errors) for errors in zip(*earlier, strict=True)),
        )


def _coarsest_step(p: Partition) -> float:
    """The finest grid step of the coarsest row or column: what truncation may drop."""
    return math.ldexp(1.0, p.points[-1] + max(p.offsets or (0,)))


def _finest_step(p: Partition) -> float:
    """The finest grid step of any row or column: values on the grid are its multiples."""
    return math.ldexp(1.0, p.points[-1] + min(p.offsets or (0,)))


# --------------------------------------------------------------------------- blocks
#: (operand file, its stamp, partition, rows): a block of W in :data:`_SPLITS`.
SplitKey = tuple[str, tuple[int, int], Partition, tuple[int, int]]
#: Per worker process: row blocks of W split under their partition, by key -> (split,
#: off the grid), in the order they were kept. Missing one (not kept, another worker)
#: costs one split again.
_SPLITS: OrderedDict[SplitKey, tuple[SplitOperand, bool]] = OrderedDict()
#: A worker keeps splits while its resident memory stays under this share of its limit,
#: which leaves a block's own working memory (its rows in float64, digits, conversions:
#: about 200 MiB for 512 rows of 16384) below Dask's 80% pause threshold; without a
#: limit, while they hold at most SPLIT_BYTES_UNLIMITED bytes.
SPLIT_SHARE, SPLIT_BYTES_UNLIMITED = 0.3, 1 << 30


def split_rows(job: MatmulJob, rows: tuple[int, int]) -> tuple[bool, bool]:
    """Split rows ``start:stop`` of W (and all of X, once per worker) and keep them on this
    worker for the resolutions, converted for the kernel in every form the resolutions
    will use (where the split is kept); whether W's rows and X had values off their
    partitions' grids (off a row's grid, for a per-row partition)."""
    key = _split_key(job, rows)
    w, off_w = _w_rows(job, key)
    x, off_x = _x_split(job.x, job.px, file_stamp(job.x.path))
    if key in _SPLITS:  # kept: its kernel conversions now, not at the resolutions
        prepare_block(w, x, job.order, kernel=worker_kernel(job.kernel, job.device),
                      reuse=job.reuse)
        _trim(key)
    return off_w, off_x


def _split_key(job: MatmulJob, rows: tuple[int, int]) -> SplitKey:
    return job.w.path, file_stamp(job.w.path), job.pw, rows


def _w_rows(job: MatmulJob, key: SplitKey) -> tuple[SplitOperand, bool]:
    """W's rows of ``key`` split (kept, or split now and kept if the share allows), and
    whether they were off the grid."""
    if key in _SPLITS:
        return _SPLITS[key]
    rows = key[3]
    partition = job.pw.rows(*rows)
    components = partition.components(job.w.rows(*rows), name="W", row_stats=True)
    held = SplitOperand.from_components(components, partition, name="W"), bool(
        components.off_grid)  # found by the split itself
    _SPLITS[key] = held
    _trim(key)
    return held


def _trim(current: SplitKey) -> None:
    """Drop kept splits while they take more than their share: other operands' first, then
    the last kept of this one's. Never the first kept of this operand's: the resolutions
    visit its blocks in the same order each time, so dropping the oldest for the newest
    would miss every one; the blocks beyond the share are split again each time instead.
    Called when a split is kept and after each block (its kernel conversions grow it)."""
    over = _over_share()
    while _SPLITS and over():
        others = [k for k in _SPLITS if k[:3] != current[:3]]
        del _SPLITS[others[0] if others else next(reversed(_SPLITS))]


def _over_share() -> Callable[[], bool]:
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError):  # not on a worker
        limit = None
    if limit:
        import psutil

        process = psutil.Process()
        return lambda: process.memory_info().rss > limit * SPLIT_SHARE
    return lambda: sum(split.nbytes for split, _ in _SPLITS.values()) > SPLIT_BYTES_UNLIMITED


@functools.lru_cache(maxsize=2)
def _x_split(source: ArraySource, partition: Partition, stamp: tuple[int, int]
             ) -> tuple[SplitOperand, bool]:
    # Cached per worker process: X's digits, kernel conversions and column statistics are
    # made once and serve every block of every resolution the worker runs.
    components = partition.components(source.read(), name="X")
    return SplitOperand.from_components(components, partition, name="X"), bool(
        components.off_grid)


@functools.lru_cache(maxsize=1)
def _as_given(source: ArraySource, stamp: tuple[int, int]) -> np.ndarray:
    # Cached per worker process: every block of the reference products needs all of X.
    return source.read().astype(np.float64)


@functools.lru_cache(maxsize=2)
def _truncated(source: ArraySource, partition: Partition, stamp: tuple[int, int]) -> np.ndarray:
    # From the cached X as given: X is read from disk once per worker.
    return partition.truncate(_as_given(source, stamp))


def error_block(job: MatmulJob, estimates: tuple[str, ...], rows: tuple[int, int],
                reference: str | None = None) -> list[tuple[float, float]]:
    """``(max |W_t @ X_t - Ω_r|, max |W @ X - Ω_r|)`` over rows of each estimate: against
    the float64 one-shot products of the truncated operands and of the operands as given
    (computed here, for these rows), or against ``reference``, an estimate equal to both
    (see :func:`layered.tasks.matmul.measure_errors`)."""
    if reference is not None:
        given = truncated = np.load(reference, mmap_mode="r")[rows[0] : rows[1]]
    else:
        w = job.w.rows(*rows)
        stamp = file_stamp(job.x.path)
        given = w.astype(np.float64) @ _as_given(job.x, stamp)
        # Operands on their grids (no truncation bound) are their own truncation: one
        # product.
        truncated = given if job.truncation == 0 else (
            job.pw.rows(*rows).truncate(w) @ _truncated(job.x, job.px, stamp))
    errors: list[tuple[float, float]] = []
    for path in estimates:
        if path == reference:
            errors.append((0.0, 0.0))
            continue
        estimate = np.load(path, mmap_mode="r")[rows[0] : rows[1]]
        error = _max_abs_difference(given, estimate)
        errors.append((error if truncated is given else
                       _max_abs_difference(truncated, estimate), error))
    return errors


def layer_split_block(job: MatmulJob, out: StagedResolution, rows: tuple[int, int],
                      splits: Sequence[tuple[bool, bool]]) -> ResolutionOutcome:
    """Resolution 1 of rows ``start:stop`` (:func:`layer_block`), run after every block of
    the operand preparation (:func:`split_rows`), whose ``(off W's grid, off X's grid)``
    give the job its truncation bound."""
    on_grids = job.on_grids(any(w for w, _ in splits), any(x for _, x in splits))
    return layer_block(on_grids, 1, None, out, rows)


def _previous_rows(previous: tuple[str, str], rows: tuple[int, int]) -> np.ndarray:
    """Rows of ``Ω_{r-1}`` from its staged file, or from its final name once the store has
    moved it there (a rename: one of the two names always exists)."""
    staged, final = previous
    try:
        estimate = np.load(staged, mmap_mode="r")
    except FileNotFoundError:
        estimate = np.load(final, mmap_mode="r")
    return estimate[rows[0] : rows[1]]


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


#: Per worker process: products a row block computed early for a later resolution (the
#: product plans of :mod:`layered.layering.plan`), by (operand files, partitions,
#: ordering, rows) -> (resolution they are for, products). Losing them (another worker, a
#: restart) costs only reuse.
_KEPT: OrderedDict[tuple[object, ...], tuple[int, dict]] = OrderedDict()
_KEPT_ENTRIES = 1024


def layer_block(
    job: MatmulJob, resolution: int, previous: tuple[str, str] | None,
    out: StagedResolution, rows: tuple[int, int],
    earlier: tuple[tuple[str, str], ...] = (),
) -> ResolutionOutcome:
    """Resolution ``resolution`` of rows ``start:stop``: ``Ω_r = Ω_{r-1} + group r``,
    written into ``out``.

    At the last resolution of a job whose float64 one-shot product is exact
    (``job.float64_exact``), rows whose bound is 0 are that product (of the truncated
    operands too, since none truncates): their outcome carries ``max |Ω_R - Ω_r|`` of
    every earlier resolution, from ``earlier`` (resolutions ``1 .. R-2``, as ``(staged,
    final)`` names like ``previous``) and ``previous``, which are their errors against
    both one-shot products, measured here at the cost of reading them.
    """
    split_key, x_stamp = _split_key(job, rows), file_stamp(job.x.path)
    w, _ = _w_rows(job, split_key)
    x, _ = _x_split(job.x, job.px, x_stamp)
    prev = None if previous is None else _previous_rows(previous, rows)
    key = (*split_key, job.x.path, x_stamp, job.px, job.order)
    for_resolution, kept = _KEPT.pop(key, (0, {}))
    res, kept = resolution_block(
        w, x, job.order, resolution, prev, truncation=job.truncation,
        kept=kept if for_resolution == resolution else None, reuse=job.reuse,
        kernel=worker_kernel(job.kernel, job.device),
    )
    if kept and resolution < job.order.resolutions:
        _KEPT[key] = (resolution + 1, kept)
        while len(_KEPT) > _KEPT_ENTRIES:
            _KEPT.popitem(last=False)
    _trim(split_key)  # the block's kernel conversions may have grown its split
    max_bound = res.max_bound  # one pass over the bound (a property, computed per call)
    earlier_errors = None
    if (job.float64_exact and resolution == job.order.resolutions
            and len(earlier) == max(0, resolution - 2) and max_bound == 0):
        estimates = [_previous_rows(names, rows) for names in earlier]
        earlier_errors = tuple(_max_abs_difference(res.estimate, e)
                               for e in [*estimates, *([] if prev is None else [prev])])
    try:
        write_rows(out.estimate, rows, res.estimate)
        # A staged file reads as zeros where nothing was written (it is sparse): a bound
        # of 0 (an exact last resolution) costs no write, and its commit no disk.
        if max_bound != 0:
            write_rows(out.bound, rows, res.bound)
    except FileNotFoundError:
        # The store committed this resolution (moved its staged files) after collecting
        # every block: Dask runs a block again when its result was lost with a worker
        # before the next resolution's block that follows it ran. Its rows are committed
        # already (the same values); a staged file missing otherwise fails the commit.
        pass
    return ResolutionOutcome(
        resolution, max_bound, res.static_bound, None, res.bit_ops, res.flops, res.exact,
        earlier_errors=earlier_errors,
    )
