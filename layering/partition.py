"""Partitioning vectors: splitting numbers into components by bit significance.

A partitioning vector ``P = (p_0 > p_1 > ... > p_m)`` (Definition 1 of the method) splits
every number ``a`` with ``|a| < 2**p_0`` into ``m`` sign-magnitude components. Component
``i`` (0-based here) holds the bits of ``|a|`` with weights in ``[2**p_{i+1}, 2**p_i)``::

    a_i = sign(a) * n_i * 2**p_{i+1},   n_i integer in [0, 2**(p_i - p_{i+1}))

and ``sum_i a_i`` is ``a`` truncated toward zero to the grid ``2**p_m``.

A *scaled* partition gives every row (or every column) of a 2-D array its own exponent
offset ``e``: that row is split under ``P + e``. Scaling by ``2**-e`` is exact, so the
digits of a scaled row are the digits of the row moved onto one shared grid (the
per-row and per-column scaling of METHOD §3, as in the Ozaki scheme).

Examples
--------
>>> p = Partition((4, 0, -3))
>>> [float(c) for c in p.split(-13.625)]
[-13.0, -0.625]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .fused import fused_split, fused_split_usable
from .kernel import over_row_blocks, scratch, thread_count
from .memory import output

__all__ = ["Partition", "PartitionRangeError", "Components", "SCALING_AXES"]

# axis=1 reduces over each row (one exponent per row); axis=0 over each column.
SCALING_AXES = (0, 1)

# Exponent offsets beyond this cannot matter for float64 data (its exponents lie in
# [-1074, 1024]) and would only risk integer overflow in exponent arithmetic.
_MAX_OFFSET = 1200

# Magnitudes are handled as int64 multiples of the finest grid, so the whole span of a
# partition (p_0 - p_m bits) must fit in a signed 64-bit integer.
_MAX_SPAN_BITS = 62

# Elements per block when splitting: large enough that numpy's per-call overhead, and the
# threads' wait for the GIL between calls, stay small against the work; the temporaries
# (a few MiB per thread) then live in L3 rather than L2. 8192x8192 float64 split in 2**16
# element blocks took 163 ms here, in 2**18 111 ms, in 2**19 104 ms.
_BLOCK = 1 << 18

# Tests set this to split small arrays in the compiled pass too (where numba is installed).
_force_fused = False


class PartitionRangeError(ValueError):
    """A value does not fit the range ``|a| < 2**p_0`` of a partition."""


@dataclass(frozen=True)
class Components:
    """The components of one array under one partition, as small signed integers.

    Attributes
    ----------
    digits : list of ndarray
        ``digits[i]`` holds ``sign(a) * n_i`` as a small signed integer array.
    exponents : tuple of int
        ``exponents[i]`` is ``p_{i+1}``: component ``i`` equals ``digits[i] * 2**exponents[i]``.
    widths : tuple of int
        ``widths[i]`` is ``p_i - p_{i+1}``, the number of magnitude bits of component ``i``.
    clipped : int
        How many values were clipped to the partition's range (0 unless clipping was asked).
    abs_max : float or None
        ``max |a|`` of the values split, found while splitting (None when not known: the
        digits came from elsewhere, or values were clipped).
    off_grid : bool or None
        Whether a value was not a multiple of the finest grid ``2**p_m``, so truncation
        dropped something (None when not known); for a scaled partition, whether a
        value was off its row's (column's) finest grid.
    offsets : ndarray or None
        For a scaled partition, the integer exponent offset of every row (shape ``(M, 1)``)
        or column (``(1, N)``): component ``i`` of row ``a`` is
        ``digits[i][a] * 2**(exponents[i] + offsets[a])``. None for one global partition.
    row_stats : list of ndarray or None
        ``row_stats[i]`` is ``[sum, max]`` of ``|digits[i]|`` over each row (int64, shape
        ``(2, M)``), found while splitting; None when not asked for or not known.
    """

    digits: list[np.ndarray]
    exponents: tuple[int, ...]
    widths: tuple[int, ...]
    clipped: int = 0
    abs_max: float | None = None
    off_grid: bool | None = None
    offsets: np.ndarray | None = None
    row_stats: list[np.ndarray] | None = None

    def value(self, i: int) -> np.ndarray:
        """Component ``i`` as a float64 array (exact unless it underflows float64)."""
        if self.offsets is None:
            return np.ldexp(self.digits[i].astype(np.float64), self.exponents[i])
        return np.ldexp(self.digits[i].astype(np.float64), self.offsets + self.exponents[i])


@dataclass(frozen=True, repr=False)
class Partition:
    """A partitioning vector ``P = (p_0 > p_1 > ... > p_m)`` of integers.

    Parameters
    ----------
    points : sequence of int
        Strictly decreasing integers; ``p_0`` sets the range ``|a| < 2**p_0`` and ``p_m``
        the finest grid ``2**p_m``. At least two points (one component).
    offsets : sequence of int, optional
        Per-row or per-column exponent offsets ``e``: row (or column) ``k`` of a 2-D array
        is split under ``P + e_k``. Stored normalised so that ``p_0 = 0`` (``points``
        then gives the shape of every row's partition, ``offsets`` its ``p_0``).
    axis : {1, 0}, optional
        With ``offsets``: 1 for one offset per row (the axis reduced to find a row's
        range), 0 for one per column.

    Raises
    ------
    ValueError
        If the points are not integers, fewer than two, not strictly decreasing, or span
        more than 62 bits; if ``offsets`` and ``axis`` do not come together, or the
        offsets are not integers within +-1200.

    Notes
    -----
    For a scaled partition, :attr:`limit`, :attr:`resolution`, :meth:`component_bound`
    and :meth:`tail_bound` are in units of ``2**e`` of each row (column).

    Examples
    --------
    >>> [float(c) for c in Partition((0, -1, -2, -3, -4)).split(0.7)]
    [0.5, 0.0, 0.125, 0.0625]
    >>> p = Partition((4, 0, -3), offsets=[0, -10], axis=1)
    >>> p
    Partition(points=(0, -4, -7), axis=1, offsets=(4, -6))
    >>> p.split([[-13.625], [-13.625 / 1024]])[1].ravel().tolist()
    [-0.625, -0.0006103515625]
    """

    points: tuple[int, ...]
    offsets: tuple[int, ...] | None = None
    axis: int | None = None

    def __init__(
        self,
        points: Sequence[int],
        offsets: npt.ArrayLike | None = None,
        axis: int | None = None,
    ) -> None:
        pts = tuple(points)
        if len(pts) < 2:
            raise ValueError(
                f"a partition needs at least two points (p_0 > p_1), got {pts!r}"
            )
        for p in pts:
            if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
                raise ValueError(f"partition points must be integers, got {p!r} in {pts!r}")
        pts = tuple(int(p) for p in pts)
        for k in range(1, len(pts)):
            if pts[k] >= pts[k - 1]:
                raise ValueError(
                    f"partition points must be strictly decreasing, but p_{k - 1}={pts[k - 1]}"
                    f" <= p_{k}={pts[k]} in {pts!r}"
                )
        if pts[0] - pts[-1] > _MAX_SPAN_BITS:
            raise ValueError(
                f"partition {pts!r} spans {pts[0] - pts[-1]} bits; at most {_MAX_SPAN_BITS}"
                " are supported"
            )
        if (offsets is None) != (axis is None):
            raise ValueError(
                "offsets and axis go together: pass both for a per-row (axis=1) or"
                f" per-column (axis=0) partition, or neither; got axis={axis!r}"
            )
        if offsets is not None:
            shifts = _as_offsets(offsets, axis)
            pts, shifts = tuple(p - pts[0] for p in pts), tuple(s + pts[0] for s in shifts)
            object.__setattr__(self, "offsets", shifts)
            object.__setattr__(self, "axis", int(axis))  # type: ignore[arg-type]
        object.__setattr__(self, "points", pts)

    def __repr__(self) -> str:
        if self.offsets is None:
            return f"Partition(points={self.points!r})"
        shown = repr(self.offsets) if len(self.offsets) <= 8 else (
            f"<{len(self.offsets)} offsets in [{min(self.offsets)}, {max(self.offsets)}]>")
        return f"Partition(points={self.points!r}, axis={self.axis}, offsets={shown})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def auto(
        cls, a: npt.ArrayLike, bits: Sequence[int] = (4, 4), axis: int | None = None
    ) -> Partition:
        """Choose a partition from the data.

        ``p_0 = floor(log2(max|a|)) + 1`` (the smallest ``p_0`` with ``max|a| < 2**p_0``),
        then component ``i`` gets ``bits[i]`` bits: ``p_{i+1} = p_i - bits[i]``. Uneven
        splits are allowed.

        Parameters
        ----------
        a : array_like
            The data the partition must cover (finite values).
        bits : sequence of int
            Magnitude bits per component, most significant first (each >= 1).
        axis : {None, 1, 0}
            None: one partition for all of ``a``. 1: one per row of the 2-D array ``a``,
            its ``p_0`` from that row's ``max|a|`` (an all-zero row gets offset 0). 0: one
            per column.

        Notes
        -----
        A value of a row keeps the bits of weight ``2**(p_0 - sum(bits))`` of its row and
        above: one ``sum(bits)``-bit grid per row. A value far below its row's largest
        loses its low bits (with ``bits=(7,) * 8``, everything below ``2**-56`` times the
        row's ``2**p_0``); what is lost is bounded by the truncation bound of a product.

        Examples
        --------
        >>> Partition.auto([200, -3, 17], bits=(4, 4))
        Partition(points=(8, 4, 0))
        >>> Partition.auto([0.99], bits=(1, 1, 1))
        Partition(points=(0, -1, -2, -3))
        >>> Partition.auto([[200.0, -3.0], [0.0, 0.0], [1e-300, 0.5]], bits=(4, 4), axis=1)
        Partition(points=(0, -4, -8), axis=1, offsets=(8, 0, 0))
        """
        widths = tuple(bits)
        if not widths or any(
            isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in widths
        ):
            raise ValueError(f"bits must be a non-empty list of integers >= 1, got {bits!r}")
        arr = _as_finite_array(a, "a")
        if axis is not None:
            if axis not in SCALING_AXES or isinstance(axis, bool):
                raise ValueError(f"axis must be None, 1 (per row) or 0 (per column), got {axis!r}")
            if arr.ndim != 2 or arr.size == 0:
                raise ValueError(
                    f"a per-row or per-column partition needs a non-empty 2-D array, got"
                    f" shape {arr.shape}"
                )
            # frexp: top = mant * 2**exp with 0.5 <= mant < 1, so top < 2**exp exactly;
            # a zero row gets exp 0.
            offsets = np.frexp(np.max(np.abs(arr), axis=axis))[1]
            return cls(_points_from(0, widths), offsets=offsets, axis=axis)
        top = float(np.max(np.abs(arr))) if arr.size else 0.0
        # frexp gives top = mant * 2**exp with 0.5 <= mant < 1, so top < 2**exp exactly.
        p0 = math.frexp(top)[1] if top > 0 else 0
        return cls(_points_from(p0, widths))

    # ------------------------------------------------------------------ properties
    @property
    def scaled(self) -> bool:
        """Whether rows (``axis=1``) or columns (``axis=0``) have their own offsets."""
        return self.offsets is not None

    def offsets_for(self, shape: tuple[int, ...], name: str = "a") -> np.ndarray | None:
        """The offsets shaped to broadcast against an array of ``shape``; None if global.

        Raises
        ------
        ValueError
            If ``shape`` is not 2-D with one row (column) per offset.
        """
        if self.offsets is None:
            return None
        along = 0 if self.axis == 1 else 1  # the axis the offsets index
        if len(shape) != 2 or shape[along] != len(self.offsets):
            kind = "row" if self.axis == 1 else "column"
            raise ValueError(
                f"{name} has shape {shape}, but its partition has one offset per {kind} for"
                f" {len(self.offsets)} {kind}s"
            )
        offsets = np.asarray(self.offsets, dtype=np.int64)
        return offsets[:, None] if self.axis == 1 else offsets[None, :]

    def rows(self, start: int, stop: int) -> Partition:
        """The partition of rows ``start:stop`` of the array this partition is for.

        A per-row partition keeps those rows' offsets; a per-column or global one is the
        same for every block of rows.

        Examples
        --------
        >>> Partition((0, -4), offsets=[3, 5, 7], axis=1).rows(1, 3)
        Partition(points=(0, -4), axis=1, offsets=(5, 7))
        """
        if self.offsets is None or self.axis != 1:
            return self
        return Partition(self.points, self.offsets[start:stop], self.axis)

    @property
    def digit_dtypes(self) -> tuple[np.dtype, ...]:
        """The dtype of each component's digits (the smallest signed integer that holds it).

        Examples
        --------
        >>> [d.name for d in Partition((12, 5, -4)).digit_dtypes]
        ['int8', 'int16']
        """
        return tuple(np.dtype(_digit_dtype(w)) for w in self.widths)

    @property
    def m(self) -> int:
        """Number of components."""
        return len(self.points) - 1

    @property
    def widths(self) -> tuple[int, ...]:
        """Magnitude bits of each component, ``p_i - p_{i+1}``."""
        return tuple(self.points[i] - self.points[i + 1] for i in range(self.m))

    @property
    def exponents(self) -> tuple[int, ...]:
        """Grid exponent of each component, ``p_{i+1}``."""
        return self.points[1:]

    @property
    def limit(self) -> float:
        """The exclusive range limit ``2**p_0``."""
        return math.ldexp(1.0, self.points[0])

    @property
    def resolution(self) -> float:
        """The finest grid step ``2**p_m``."""
        return math.ldexp(1.0, self.points[-1])

    def component_bound(self, i: int) -> float:
        """Largest magnitude component ``i`` can hold: ``2**p_i - 2**p_{i+1}``."""
        return math.ldexp(1.0, self.points[i]) - math.ldexp(1.0, self.points[i + 1])

    def tail_bound(self, r: int) -> float:
        """Largest magnitude of the components not among the first ``r``.

        Equals ``2**p_r - 2**p_m`` (for the truncated value), so after ``r`` components
        the dropped part of any value is at most this.
        """
        if not 0 <= r <= self.m:
            raise ValueError(f"r must be in [0, {self.m}], got {r}")
        return math.ldexp(1.0, self.points[r]) - math.ldexp(1.0, self.points[-1])

    # ------------------------------------------------------------------ checks
    def check(self, a: npt.ArrayLike, name: str = "a") -> np.ndarray:
        """Validate that every value of ``a`` is finite and inside ``|a| < 2**p_0``.

        Returns ``a`` as a float64 array.

        Raises
        ------
        ValueError
            On NaN or infinite values (naming the first offending index).
        PartitionRangeError
            On a value with ``|a| >= 2**p_0`` (naming the value, its index and ``p_0``).
        """
        arr = _as_finite_array(a, name)
        limit = self._limits(arr.shape, name)
        over = np.abs(arr) >= limit
        if np.any(over):
            idx = _first_index(over)
            shift = np.broadcast_to(self._shifts(arr.shape, name), arr.shape)[idx]
            p0 = self.points[0] + int(shift)
            raise PartitionRangeError(
                f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} is out of range for partition"
                f" {self.points}{self._scaled_note(idx)}: |value| must be < 2^p_0 = 2^{p0}"
                f" = {math.ldexp(1.0, p0):g} ({int(over.sum())} value(s) out of range; pass"
                " clip=True to clip and count them instead)"
            )
        return arr

    def _shifts(self, shape: tuple[int, ...], name: str) -> np.ndarray | int:
        offsets = self.offsets_for(shape, name)
        return 0 if offsets is None else offsets

    def _limits(self, shape: tuple[int, ...], name: str) -> np.ndarray | float:
        """``2**p_0`` of every row (column), broadcastable to ``shape``."""
        if self.offsets is None:
            return self.limit
        with np.errstate(over="ignore"):  # a row whose 2**p_0 exceeds float64: no limit
            return np.ldexp(1.0, self._shifts(shape, name) + self.points[0])

    def _scaled_note(self, idx: tuple[int, ...]) -> str:
        if self.offsets is None:
            return ""
        kind, k = ("row", idx[0]) if self.axis == 1 else ("column", idx[1])
        return f" with {kind} {k}'s offset {self.offsets[k]}"

    def clip(self, a: npt.ArrayLike, name: str = "a") -> tuple[np.ndarray, int]:
        """Clip values with ``|a| >= 2**p_0`` to the largest representable magnitude.

        Returns the clipped array and how many values were out of range; in-range values
        are left as they are (truncation handles them).

        Examples
        --------
        >>> Partition((4, 0, -3)).clip([15.95, 16.0, -40.0])
        (array([ 15.95 ,  15.875, -15.875]), 2)
        """
        arr = _as_finite_array(a, name)
        limit = self._limits(arr.shape, name)
        over = np.abs(arr) >= limit
        n = int(over.sum())
        if n:
            top = limit - np.ldexp(1.0, self._shifts(arr.shape, name) + self.points[-1])
            arr = np.where(over, np.copysign(top, arr), arr)
        return arr, n

    # ------------------------------------------------------------------ splitting
    def components(self, a: npt.ArrayLike, *, clip: bool = False, name: str = "a",
                   row_stats: bool = False) -> Components:
        """Split ``a`` into signed small-integer digits, one array per component.

        Parameters
        ----------
        a : array_like
            Finite values with ``|a| < 2**p_0``.
        clip : bool
            If True, values outside the range are clipped to the largest representable
            magnitude and counted (``Components.clipped``) instead of raising.
        name : str
            Name of the operand, used in error messages.
        row_stats : bool
            Also find ``[sum, max]`` of every row's ``|digits|`` (``Components.row_stats``)
            while the digits are in cache, for a 2-D ``a`` whose rows fit a block (the
            statistics a left operand's bounds read); otherwise they are left to the reader.

        Notes
        -----
        With ``T_k = trunc(a / 2**p_k)``, the signed digit of component ``i`` is
        ``T_{i+1} - 2**(p_i - p_{i+1}) * T_i`` in integer arithmetic, and ``T_0 = 0`` for
        in-range values. Only ``T_m`` comes from a float (an exact scaling, truncated by
        the conversion to an integer); every other ``T_k`` is ``T_m`` shifted right in
        integers, rounded toward zero. The work is done in cache-sized blocks on every
        core, reading ``a`` once: the range and NaN check, ``max |a|`` and whether ``a``
        was on the finest grid come from the same pass. A scaled partition multiplies row (column)
        ``k`` by ``2**-e_k`` in the same pass, block by block: exact, except that values
        below ``2**-1022`` times the row's scale may round, and those lie far below the
        row's finest grid (the span is at most 62 bits), so their digits are the same.
        """
        arr = np.asarray(a)
        n_clipped = 0
        if clip:
            arr, n_clipped = self.clip(arr, name)
        offsets = self.offsets_for(np.shape(arr), name)
        flat = _as_numeric(arr, name).reshape(-1)
        shape = np.shape(arr)
        shifts = None if offsets is None else _Shifts(-offsets.ravel(), self.axis, shape)
        columns = int(shape[1]) if len(shape) == 2 else 0
        dtypes = [np.dtype(_digit_dtype(w)) for w in self.widths]
        stats_wanted = row_stats and 0 < columns <= _BLOCK
        if offsets is None and fused_split_usable(flat, dtypes, self.points,
                                                  row_stats=stats_wanted, force=_force_fused):
            return self._fused_components(arr, name, flat, shape, columns, stats_wanted,
                                          n_clipped, clip)
        digits = [np.empty(flat.shape, dtype=dtype) for dtype in dtypes]
        # blocks of whole rows where a row fits one, so a block also gives its rows' stats
        stats = None
        if stats_wanted:
            stats = [np.empty((2, shape[0]), dtype=np.int64) for _ in self.widths]
        size = _BLOCK // columns * columns if stats is not None else _BLOCK
        starts = range(0, flat.size, size)
        scans: list[tuple[float, bool] | None] = [None] * len(starts)
        seen_off_grid: list[bool] = []  # once a block is off the grid, no more checks

        def split(first: int, stop: int) -> None:
            scratch = self._scratch(flat, size, shifts)
            for b in range(first, stop):
                block = slice(starts[b], min(starts[b] + size, flat.size))
                scans[b] = self._split_block(flat, digits, block, scratch, seen_off_grid,
                                             shifts)
                if stats is not None and scans[b] is not None:
                    _row_stats(digits, block, columns, stats)

        over_row_blocks(len(starts), 1, split)
        if any(s is None for s in scans):
            self.check(arr, name)  # raises, naming the offending value
        found = [s for s in scans if s is not None]
        return Components(
            [d.reshape(shape) for d in digits], self.exponents, self.widths, n_clipped,
            abs_max=None if clip else max((s[0] for s in found), default=0.0),
            off_grid=None if clip else any(s[1] for s in found),
            offsets=offsets, row_stats=stats,
        )

    def _fused_components(self, arr: np.ndarray, name: str, flat: np.ndarray,
                          shape: tuple[int, ...], columns: int, row_stats: bool,
                          n_clipped: int, clip: bool) -> Components:
        """:meth:`components` of an unscaled partition in one compiled pass
        (:mod:`.fused`): the same digits, statistics and flags as the numpy passes.
        ``row_stats``: whether to find them (rows that fit a block, as those passes)."""
        flat = np.ascontiguousarray(flat)
        digits = output((self.m, flat.size), _digit_dtype(max(self.widths)))
        stats = np.empty((self.m, 2, shape[0]), dtype=np.int64) if row_stats else None
        abs_max, bad, off_grid, _ = fused_split(flat, digits, self.points, self.limit, stats,
                                                columns, thread_count())
        if bad:
            self.check(arr, name)  # raises, naming the offending value
        return Components(
            [d.reshape(shape) for d in digits], self.exponents, self.widths, n_clipped,
            abs_max=None if clip else abs_max, off_grid=None if clip else off_grid,
            row_stats=None if stats is None else list(stats),
        )

    def _scratch(self, flat: np.ndarray, size: int, shifts: _Shifts | None = None
                 ) -> list[np.ndarray]:
        """Block-sized buffers for :meth:`_split_block`: four integer ones (``T_m``, its
        sign, ``T_k``, ``T_k`` shifted), two floats, one of flags (off the grid), and for
        a scaled partition the shifted block's scales and their indices.

        Kept per thread and reused: fresh pages would cost more than the work.
        """
        # |T_k| < 2**(p_0 - p_k): the narrowest signed integer that holds 2**span - 1
        span = self.points[0] - self.points[-1]
        ints = np.dtype(np.int16 if span <= 15 else np.int32 if span <= 31 else np.int64)
        # shifted values are float64 (a float32 row may need a scale beyond float32)
        floats = (flat.dtype if flat.dtype.kind == "f" and shifts is None
                  else np.dtype(np.float64))
        buffers = [scratch(f"split-{k}", size, ints) for k in range(4)] + [
            scratch(f"split-{k}", size, floats) for k in range(4, 6)] + [
            scratch("split-dropped", size, np.bool_)]
        if shifts is not None:
            buffers += [scratch("split-scales", size, np.float64),
                        scratch("split-index", size, np.intp)]
        return buffers

    def _split_block(
        self, flat: np.ndarray, digits: list[np.ndarray], block_range: slice,
        scratch: list[np.ndarray], seen_off_grid: list[bool], shifts: _Shifts | None = None,
    ) -> tuple[float, bool] | None:
        """Write the digits of ``flat[block_range]``.

        Returns ``(max |a|, off the finest grid)`` of the block (``max |a|`` before any
        shift), or None if a value is out of range (or NaN).
        """
        block = flat[block_range]
        size = block.size
        t, sign, current, shifted, scaled, converted, dropped = (s[:size] for s in scratch[:7])
        if block.dtype.kind not in "f":
            converted[...] = block  # integers and booleans: exact below 2**53
            block = converted
        hi, lo = float(block.max()), float(block.min())
        if shifts is not None:
            top = max(hi, -lo)  # (NaN fails the range check below)
            scales, index = (s[:size] for s in scratch[7:9])
            block = shifts.apply(block, block_range.start, scales, index, out=converted)
            hi, lo = float(block.max()), float(block.min())
        if not (hi < self.limit and -lo < self.limit):  # also catches NaN
            return None
        scale = math.ldexp(1.0, -self.points[-1])
        values = block if scale == 1.0 else np.multiply(block, scale, out=scaled)
        t[...] = values  # T_m: the conversion truncates toward zero
        off_grid = False
        if not seen_off_grid and np.not_equal(values, t, out=dropped).any():
            off_grid = True  # (the comparison converts T_m to values' dtype, exactly)
            seen_off_grid.append(True)
        # T_k = trunc(T_m / 2**s): an arithmetic shift rounds toward -inf, so negative
        # values get 2**s - 1 added first
        np.right_shift(t, 8 * t.itemsize - 1, out=sign)
        previous = None
        for i in range(self.m):
            bits = self.points[i + 1] - self.points[-1]
            out = digits[i][block_range]
            value = t
            if bits:
                np.bitwise_and(sign, (1 << bits) - 1, out=current)
                np.add(current, t, out=current)
                value = np.right_shift(current, bits, out=current)
            if previous is None:
                out[...] = value
            else:
                np.subtract(value, previous, out=out, casting="unsafe")
            if i + 1 < self.m:
                previous = np.left_shift(value, self.widths[i + 1], out=shifted)
        return (max(hi, -lo) if shifts is None else top), off_grid

    def split(self, a: npt.ArrayLike, *, clip: bool = False) -> list[np.ndarray]:
        """Split ``a`` into ``m`` float64 component arrays whose sum is ``truncate(a)``.

        Examples
        --------
        >>> [float(c) for c in Partition((4, 0, -3)).split(-13.625)]
        [-13.0, -0.625]
        """
        comps = self.components(a, clip=clip)
        return [comps.value(i) for i in range(self.m)]

    def truncate(self, a: npt.ArrayLike, r: int | None = None, *, clip: bool = False) -> np.ndarray:
        """``a`` truncated toward zero to the grid of its first ``r`` components.

        ``r=None`` (all components) truncates to the finest grid ``2**p_m``.

        Examples
        --------
        >>> float(Partition((0, -1, -2, -3, -4)).truncate(0.7))
        0.6875
        >>> float(Partition((0, -1, -2, -3, -4)).truncate(0.7, r=2))
        0.5
        """
        r = self.m if r is None else r
        if not 0 <= r <= self.m:
            raise ValueError(f"r must be in [0, {self.m}], got {r}")
        arr = self.clip(a)[0] if clip else self.check(a)
        step = self._shifts(arr.shape, "a") + self.points[r]
        if r == 0:
            return np.zeros_like(arr)
        # Truncation to the grid 2**p_r, toward zero; exact in float64.
        return np.copysign(np.ldexp(np.floor(np.ldexp(np.abs(arr), -step)), step), arr) + 0.0

    def reconstruct(self, parts: Sequence[npt.ArrayLike]) -> np.ndarray:
        """Sum components back into values (the inverse of :meth:`split`)."""
        if len(parts) != self.m:
            raise ValueError(f"expected {self.m} components, got {len(parts)}")
        total = np.zeros(np.shape(parts[0]), dtype=np.float64)
        for part in parts:
            total = total + np.asarray(part, dtype=np.float64)
        return total


def _points_from(p0: int, widths: Sequence[int]) -> list[int]:
    pts = [p0]
    for b in widths:
        pts.append(pts[-1] - int(b))
    return pts


def _as_offsets(offsets: npt.ArrayLike, axis: object) -> tuple[int, ...]:
    if isinstance(axis, bool) or axis not in SCALING_AXES:
        raise ValueError(f"axis must be 1 (per row) or 0 (per column), got {axis!r}")
    arr = np.asarray(offsets)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"offsets must be a non-empty 1-D sequence of integers, got dtype {arr.dtype}"
            f" and shape {arr.shape}"
        )
    if np.any(np.abs(arr) > _MAX_OFFSET):
        raise ValueError(f"offsets must lie within +-{_MAX_OFFSET}, got {int(np.max(np.abs(arr)))}")
    return tuple(int(v) for v in arr)


class _Shifts:
    """Per-row (``axis=1``) or per-column (``axis=0``) power-of-two shifts of a 2-D array,
    applied to blocks of its flattened (C-order) values."""

    def __init__(self, exponents: np.ndarray, axis: int | None, shape: tuple[int, ...]) -> None:
        self.exponents = exponents.astype(np.int64)
        self.axis, self.columns = axis, int(shape[1])
        # plain products by the scales are exact where every 2**e is a normal number
        self.scales = (np.ldexp(1.0, self.exponents)
                       if bool(np.all(np.abs(self.exponents) <= 1022)) else None)

    def apply(self, block: np.ndarray, start: int, scales: np.ndarray, index: np.ndarray,
              out: np.ndarray) -> np.ndarray:
        """``block * 2**e`` of each value's row (column), ``block`` starting at ``start``."""
        index[...] = np.arange(start, start + block.size)
        if self.axis == 1:
            np.floor_divide(index, self.columns, out=index)
        else:
            np.remainder(index, self.columns, out=index)
        with np.errstate(over="ignore"):  # an overflow becomes inf: out of range, reported
            if self.scales is not None:
                np.take(self.scales, index, out=scales)
                return np.multiply(block, scales, out=out)
            return np.ldexp(block, np.take(self.exponents, index), out=out)


def _row_stats(digits: list[np.ndarray], block: slice, columns: int,
               stats: list[np.ndarray]) -> None:
    """``stats[i][:, rows] = [sum, max]`` of ``|digits[i]|`` for the whole rows of ``block``
    (of the flattened digits), in integers: exact."""
    rows = slice(block.start // columns, block.stop // columns)
    for d, out in zip(digits, stats, strict=True):
        part = d[block]
        mag = np.abs(part, out=scratch("split-magnitudes", part.size, d.dtype))
        mag = mag.reshape(-1, columns)
        top = (1 << (8 * d.itemsize - 1)) - 1
        out[0, rows] = mag.sum(axis=1, dtype=np.int32 if columns * top < 2**31 else np.int64)
        out[1, rows] = mag.max(axis=1)


def _digit_dtype(width: int) -> type[np.signedinteger]:
    if width <= 7:
        return np.int8
    if width <= 15:
        return np.int16
    if width <= 31:
        return np.int32
    return np.int64


def _as_numeric(a: npt.ArrayLike, name: str) -> np.ndarray:
    """``a`` as an array of a real numeric dtype (no copy when it already is one)."""
    arr = np.asarray(a)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    return arr


def _as_finite_array(a: npt.ArrayLike, name: str) -> np.ndarray:
    arr = _as_numeric(a, name).astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not np.all(finite):
        idx = _first_index(~finite)
        raise ValueError(
            f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} is not finite"
            f" ({int((~finite).sum())} NaN/inf value(s) in {name})"
        )
    return arr


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _fmt_index(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in idx) + "]" if idx else ""
