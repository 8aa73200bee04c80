"""Partitioning vectors: splitting numbers into components by bit significance.

A partitioning vector ``P = (p_0 > p_1 > ... > p_m)`` (Definition 1 of the method) splits
every number ``a`` with ``|a| < 2**p_0`` into ``m`` sign-magnitude components. Component
``i`` (0-based here) holds the bits of ``|a|`` with weights in ``[2**p_{i+1}, 2**p_i)``::

    a_i = sign(a) * n_i * 2**p_{i+1},   n_i integer in [0, 2**(p_i - p_{i+1}))

and ``sum_i a_i`` is ``a`` truncated toward zero to the grid ``2**p_m``.

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

from .kernel import over_row_blocks, scratch

__all__ = ["Partition", "PartitionRangeError", "Components"]

# Magnitudes are handled as int64 multiples of the finest grid, so the whole span of a
# partition (p_0 - p_m bits) must fit in a signed 64-bit integer.
_MAX_SPAN_BITS = 62

# Elements per block when splitting: large enough to amortise numpy call overhead, small
# enough that the temporaries stay in cache.
_BLOCK = 1 << 16


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
        dropped something (None when not known).
    """

    digits: list[np.ndarray]
    exponents: tuple[int, ...]
    widths: tuple[int, ...]
    clipped: int = 0
    abs_max: float | None = None
    off_grid: bool | None = None

    def value(self, i: int) -> np.ndarray:
        """Component ``i`` as a float64 array (exact)."""
        return np.ldexp(self.digits[i].astype(np.float64), self.exponents[i])


@dataclass(frozen=True)
class Partition:
    """A partitioning vector ``P = (p_0 > p_1 > ... > p_m)`` of integers.

    Parameters
    ----------
    points : sequence of int
        Strictly decreasing integers; ``p_0`` sets the range ``|a| < 2**p_0`` and ``p_m``
        the finest grid ``2**p_m``. At least two points (one component).

    Raises
    ------
    ValueError
        If the points are not integers, fewer than two, not strictly decreasing, or span
        more than 62 bits.

    Examples
    --------
    >>> [float(c) for c in Partition((0, -1, -2, -3, -4)).split(0.7)]
    [0.5, 0.0, 0.125, 0.0625]
    """

    points: tuple[int, ...]

    def __init__(self, points: Sequence[int]) -> None:
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
        object.__setattr__(self, "points", pts)

    # ------------------------------------------------------------------ construction
    @classmethod
    def auto(cls, a: npt.ArrayLike, bits: Sequence[int] = (4, 4)) -> Partition:
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

        Examples
        --------
        >>> Partition.auto([200, -3, 17], bits=(4, 4))
        Partition(points=(8, 4, 0))
        >>> Partition.auto([0.99], bits=(1, 1, 1))
        Partition(points=(0, -1, -2, -3))
        """
        widths = tuple(bits)
        if not widths or any(
            isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in widths
        ):
            raise ValueError(f"bits must be a non-empty list of integers >= 1, got {bits!r}")
        arr = _as_finite_array(a, "a")
        top = float(np.max(np.abs(arr))) if arr.size else 0.0
        # frexp gives top = mant * 2**exp with 0.5 <= mant < 1, so top < 2**exp exactly.
        p0 = math.frexp(top)[1] if top > 0 else 0
        pts = [p0]
        for b in widths:
            pts.append(pts[-1] - int(b))
        return cls(pts)

    # ------------------------------------------------------------------ properties
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
        over = np.abs(arr) >= self.limit
        if np.any(over):
            idx = _first_index(over)
            raise PartitionRangeError(
                f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} is out of range for partition"
                f" {self.points}: |value| must be < 2^p_0 = 2^{self.points[0]} = {self.limit:g}"
                f" ({int(over.sum())} value(s) out of range; pass clip=True to clip and count"
                " them instead)"
            )
        return arr

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
        over = np.abs(arr) >= self.limit
        n = int(over.sum())
        if n:
            top = self.limit - self.resolution
            arr = np.where(over, np.copysign(top, arr), arr)
        return arr, n

    # ------------------------------------------------------------------ splitting
    def components(self, a: npt.ArrayLike, *, clip: bool = False, name: str = "a") -> Components:
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

        Notes
        -----
        With ``T_k = trunc(a / 2**p_k)`` (an exact scaling, truncated by the conversion to
        an integer), the signed digit of component ``i`` is
        ``T_{i+1} - 2**(p_i - p_{i+1}) * T_i`` in integer arithmetic, and ``T_0 = 0`` for
        in-range values. The work is done in cache-sized blocks on every core, reading
        ``a`` once: the range and NaN check, ``max |a|`` and whether ``a`` was on the
        finest grid come from the same pass.
        """
        arr = np.asarray(a)
        n_clipped = 0
        if clip:
            arr, n_clipped = self.clip(arr, name)
        flat = _as_numeric(arr, name).reshape(-1)
        digits = [np.empty(flat.shape, dtype=_digit_dtype(w)) for w in self.widths]
        starts = range(0, flat.size, _BLOCK)
        scans: list[tuple[float, bool] | None] = [None] * len(starts)
        seen_off_grid: list[bool] = []  # once a block is off the grid, no more checks

        def split(first: int, stop: int) -> None:
            scratch = self._scratch(flat)
            for b in range(first, stop):
                scans[b] = self._split_block(flat, digits, starts[b], scratch, seen_off_grid)

        over_row_blocks(len(starts), 1, split)
        if any(s is None for s in scans):
            self.check(arr, name)  # raises, naming the offending value
        found = [s for s in scans if s is not None]
        shape = np.shape(arr)
        return Components(
            [d.reshape(shape) for d in digits], self.exponents, self.widths, n_clipped,
            abs_max=None if clip else max((s[0] for s in found), default=0.0),
            off_grid=None if clip else any(s[1] for s in found),
        )

    def _scratch(self, flat: np.ndarray) -> list[np.ndarray]:
        """Block-sized buffers for :meth:`_split_block`: two for ``T_k``, three floats.

        Kept per thread and reused: fresh pages would cost more than the work.
        """
        # |T_k| < 2**(p_0 - p_k): int32 holds it for spans up to 30 bits
        ints = np.dtype(np.int32 if self.points[0] - self.points[-1] <= 30 else np.int64)
        floats = flat.dtype if flat.dtype.kind == "f" else np.dtype(np.float64)
        return [scratch(f"split-{k}", _BLOCK, ints) for k in range(2)] + [
            scratch(f"split-{k}", _BLOCK, floats) for k in range(2, 5)]

    def _split_block(
        self, flat: np.ndarray, digits: list[np.ndarray], start: int,
        scratch: list[np.ndarray], seen_off_grid: list[bool],
    ) -> tuple[float, bool] | None:
        """Write the digits of ``flat[start:start + _BLOCK]``.

        Returns ``(max |a|, off the finest grid)`` of the block, or None if a value is out
        of range (or NaN).
        """
        block = flat[start : start + _BLOCK]
        previous, t, scaled, whole, converted = (s[: block.size] for s in scratch)
        if block.dtype.kind not in "f":
            converted[...] = block  # integers and booleans: exact below 2**53
            block = converted
        hi, lo = float(block.max()), float(block.min())
        if not (hi < self.limit and -lo < self.limit):  # also catches NaN
            return None
        off_grid = False
        for i in range(self.m):
            scale = math.ldexp(1.0, -self.points[i + 1])
            values = block if scale == 1.0 else np.multiply(block, scale, out=scaled)
            out = digits[i][start : start + _BLOCK]
            if i == 0:
                out[...] = values  # the conversion truncates toward zero
                if self.m > 1:
                    np.left_shift(out, self.widths[1], out=previous, dtype=previous.dtype)
            else:
                t[...] = values  # truncates toward zero
                np.subtract(t, previous, out=out, casting="unsafe")
                if i + 1 < self.m:
                    np.left_shift(t, self.widths[i + 1], out=previous)
            if i == self.m - 1:
                if not seen_off_grid and not np.array_equal(values, np.trunc(values, out=whole)):
                    off_grid = True
                    seen_off_grid.append(True)
        return max(hi, -lo), off_grid

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
        step = self.points[r]
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
