"""Per-row and per-column scaling of layered products, and their guaranteed bounds.

A per-row partition of W gives row ``a`` the exponent offset ``s_a``; a per-column one of
X gives column ``b`` the offset ``t_b`` (see :class:`~.partition.Partition`). The digits
are those of ``D_W = diag(2**-s) W_t`` and ``D_X = X_t diag(2**-t)``, which share one
grid, so::

    W_t @ X_t = diag(2**s) (D_W @ D_X) diag(2**t)

Every component product is the exact integer product of digits, as for one global
partition (any kernel); the term a resolution adds, and its bounds, are rescaled entry by
entry by ``2**(s_a + t_b)``. This is the error-free splitting of the Ozaki scheme (Ozaki,
Ogita, Oishi, Rump), with its diagonals as resolutions (METHOD §3).

Rounding. Powers of two scale exactly unless they under- or overflow. What is not exact
is the float64 sum of a resolution's component products and the sum into the estimate
(when ``2**53`` is too small for the grid span, as with 8 slices of 7 bits). Each entry's
estimate is a float64 sum of at most ``n = pairs + resolutions`` exactly known terms (the
kernel's integer products, exact in float64 below ``2**53``; beyond that, when a product
is converted with one rounding, and Karatsuba subtracts two more, ``n = 4 pairs +
resolutions`` covers them) whose magnitudes add up to at most ``(|W_t| @ |X_t|)_ab``, so
its rounding error is at most ``γ_n (|W_t| @ |X_t|)_ab`` with ``γ_n = n u / (1 - n u)``,
``u = 2**-53``, for every resolution at once, plus ``2**-1074`` per operation for
underflow. That term joins every bound, which therefore holds against the true product
and still never increases.

Examples
--------
Rows 10^12 apart. With one global partition, the small row is still all zero at the
second resolution; with one partition per row, it is as accurate as the large one.

>>> import numpy as np
>>> from layered.layering import Partition, layered_matmul
>>> W = np.array([[3.0e6, -1.0e6], [3.0e-6, -1.0e-6]]); X = np.array([[0.7], [0.3]])
>>> def second(pw, px):
...     res = list(layered_matmul(W, X, pw, px))[1]
...     return np.round(res.estimate.ravel() / [1.8e6, 1.8e-6], 5).tolist(), res.bound.shape
>>> second(Partition.auto(W, bits=(7,) * 8), Partition.auto(X, bits=(7,) * 8))
([0.99984, 0.0], (2, 1))
>>> per_row = Partition.auto(W, bits=(7,) * 8, axis=1)
>>> second(per_row, Partition.auto(X, bits=(7,) * 8, axis=0))
([0.99984, 0.99986], (2, 1))
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .partition import Partition

__all__ = [
    "check_scaling",
    "largest_entry",
    "rescale",
    "rescale_is_exact",
    "scaled_bound",
    "scaled_truncation_bound",
]

_U = 2.0**-53  # unit roundoff of float64
_TINY = math.ldexp(1.0, -1074)  # the smallest subnormal: the most one underflow can lose
# float64 normal exponents: 2**e is normal for -1022 <= e <= 1023
_EMIN, _EMAX = -1022, 1023


def check_scaling(pw: Partition, px: Partition) -> None:
    """W may be scaled per row and X per column; any other scaling does not factor out.

    Raises
    ------
    ValueError
        If W's partition is per column or X's is per row: the offsets would run along
        the inner dimension, where no power of two can be taken out of the sum.
    """
    if pw.axis == 0:
        raise ValueError(
            "W's partition is per column (axis=0); scale W per row (axis=1) or globally:"
            " per-column offsets of W run along the inner dimension of W @ X"
        )
    if px.axis == 1:
        raise ValueError(
            "X's partition is per row (axis=1); scale X per column (axis=0) or globally:"
            " per-row offsets of X run along the inner dimension of W @ X"
        )


def _offsets(w, x) -> tuple[np.ndarray | int, np.ndarray | int]:
    """Row offsets of W (M, 1) and column offsets of X (1, N), 0 where global."""
    s = w.components.offsets
    t = x.components.offsets
    return (0 if s is None else s), (0 if t is None else t)


def _range(values: np.ndarray | int) -> tuple[int, int]:
    arr = np.asarray(values)
    return int(arr.min()), int(arr.max())


def _magnitude_exponents(w, x) -> tuple[int, int]:
    """Exponents ``lo, hi`` with every nonzero |term| of the product in ``[2**lo, 2**hi)``.

    In the shared (unscaled) units: terms and bounds are multiples of the product of the
    finest grids, and below ``K 2**(p^W_0 + p^X_0)`` (times a little slack for bounds).
    """
    pw, px = w.partition.points, x.partition.points
    return pw[-1] + px[-1], pw[0] + px[0] + int(w.shape[1]).bit_length() + 2


def rescale_is_exact(w, x) -> bool:
    """Whether multiplying by ``2**s_a`` and then ``2**t_b`` can neither under- nor overflow."""
    s, t = _offsets(w, x)
    (s_lo, s_hi), (t_lo, t_hi) = _range(s), _range(t)
    lo, hi = _magnitude_exponents(w, x)
    return (
        _EMIN <= min(s_lo, t_lo) and max(s_hi, t_hi) <= _EMAX
        and s_lo + lo >= _EMIN and s_hi + hi <= _EMAX
        and s_lo + t_lo + lo >= _EMIN and s_hi + t_hi + hi <= _EMAX
    )


def rescale(term: npt.ArrayLike, w, x) -> np.ndarray:
    """``term`` (in the shared units) times ``2**(s_a + t_b)``; unchanged when unscaled.

    Exact unless the result underflows float64 (then it is rounded once, by less than
    ``2**-1074``).

    Raises
    ------
    OverflowError
        If a rescaled entry exceeds the float64 range.
    """
    s, t = _offsets(w, x)
    arr = np.asarray(term, dtype=np.float64)
    if isinstance(s, int) and isinstance(t, int):
        return arr
    if rescale_is_exact(w, x):
        out = np.multiply(arr, np.ldexp(1.0, s))
        out *= np.ldexp(1.0, t)
        return out
    with np.errstate(over="ignore"):
        out = np.ldexp(arr, np.add(s, t))
    if not np.all(np.isfinite(out)):
        raise OverflowError(
            f"{w.name} @ {x.name} exceeds the float64 range (largest row offset of {w.name}"
            f" {_range(s)[1]}, of column offset of {x.name} {_range(t)[1]})"
        )
    return out


def _rounding_factors(w, x, pairs: int, resolutions: int) -> tuple[np.ndarray, np.ndarray]:
    """``γ_n rowsum|W_t|`` (M, 1) and ``colmax|X_t|`` (1, N), in the shared units.

    Their outer product bounds ``γ_n (|W_t| @ |X_t|)``: the rounding of every resolution's
    estimate, ``n`` being the roundings per entry (see the module notes).
    """
    widest = (1 << max(w.components.widths)) * (1 << max(x.components.widths))
    exact_leaves = 4 * w.shape[1] * widest < 2**53  # also Karatsuba's doubled digits
    n = (pairs if exact_leaves else 4 * pairs) + resolutions
    gamma = 1.01 * n * _U / (1 - n * _U)  # 1.01: room for the rounding of this very bound
    row_sum = sum(w.abs_stats(i, axis=1)[0] for i in range(w.partition.m))
    col_max = sum(x.abs_stats(j, axis=0)[1] for j in range(x.partition.m))
    return gamma * np.asarray(row_sum)[:, None], np.asarray(col_max)[None, :]


def _underflow_possible(w, x) -> bool:
    """Whether a term, a bound or a rounding bound of the product may fall below 2**-1022."""
    s, t = _offsets(w, x)
    lo = _magnitude_exponents(w, x)[0] - 64  # γ_n and the slack reach below the grid
    s_lo, t_lo = _range(s)[0], _range(t)[0]
    return min(s_lo, t_lo, s_lo + t_lo, 0) + lo < _EMIN or not rescale_is_exact(w, x)


def scaled_bound(
    bound: np.ndarray, w, x, pairs: int, resolutions: int, exact: bool
) -> np.ndarray:
    """A remaining-pairs bound in the shared units made a guarantee in real units.

    Rescaled entry by entry; when the estimate is not exact, the rounding term
    ``γ_n rowsum|W_t|_a colmax|X_t|_b`` is added (see the module notes), and where
    something may underflow, ``2**-1074`` per rounding. A global product that is exact
    is returned as is.

    Parameters
    ----------
    bound : ndarray
        Bound on the pairs not yet added, in the shared units (broadcastable).
    pairs, resolutions : int
        Component pairs and resolutions of the whole product (for the rounding term).
    exact : bool
        Whether the estimates are exact (no rounding to account for).
    """
    s, t = _offsets(w, x)
    if exact and isinstance(s, int) and isinstance(t, int):
        return bound
    # relative room for the float64 sums that computed `bound` (non-negative terms)
    slack = 1.0 + 4 * (pairs + 4) * _U
    out = np.empty((w.shape[0], x.shape[1]))
    with np.errstate(over="ignore"):  # an infinite bound is still a bound
        if rescale_is_exact(w, x):  # powers of two in range: plain products are exact
            np.multiply(bound, slack * np.ldexp(1.0, s), out=out)
            if not isinstance(t, int):
                out *= np.ldexp(1.0, t)
        else:
            out[...] = np.ldexp(np.multiply(bound, slack), np.add(s, t))
        if not exact:
            rows, cols = _rounding_factors(w, x, pairs, resolutions)
            out += np.ldexp(rows, s) * np.ldexp(cols, t)
    if _underflow_possible(w, x):
        out += (2 * pairs + resolutions + 4) * _TINY
    return out


def scaled_truncation_bound(
    W: npt.ArrayLike | None, X: npt.ArrayLike | None, w, x
) -> np.ndarray:
    """Elementwise bound on ``|W @ X - W_t @ X_t|`` for scaled partitions.

    ``δW_a colsum|X|_b + rowsum|W|_a δX_b``, where ``δW_a`` is the finest grid step of row
    ``a`` (0 if the row is on its grid, or W was given already split) and ``δX_b`` that
    of column ``b``; ``W @ X - W_t X_t = ΔW X + W_t ΔX`` with ``|ΔW_ak| < δW_a``.

    Parameters
    ----------
    W, X : array_like or None
        The operands as given to the product; None for one given already split (it is
        its truncated value: nothing is dropped).
    w, x : SplitOperand
        The same operands split.
    """
    k = w.shape[1]
    w_drop = _drop(W, w, axis=1)
    x_drop = _drop(X, x, axis=0)
    w_sum = _abs_sum(W, w, axis=1)[:, None]
    x_sum = _abs_sum(X, x, axis=0)[None, :]
    slack = 1.0 + 2 * (k + 8) * _U
    with np.errstate(over="ignore"):  # an infinite bound is still a bound
        return (w_drop * x_sum + w_sum * x_drop) * slack + 2 * _TINY


def _drop(a: npt.ArrayLike | None, split, axis: int) -> np.ndarray | float:
    """Per row (axis=1) or column (axis=0): the grid step truncation may drop below, or 0."""
    if a is None:
        return 0.0
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    offsets = split.components.offsets
    grid = split.partition.points[-1] + (0 if offsets is None else offsets)
    mag = np.abs(arr)
    if _EMIN <= _range(grid)[0] and _range(grid)[1] <= _EMAX:  # 2**±grid normal: exact
        on_grid = np.floor(mag * np.ldexp(1.0, -grid)) * np.ldexp(1.0, grid) == mag
    else:
        on_grid = np.ldexp(np.floor(np.ldexp(mag, -grid)), grid) == mag
    if offsets is None:
        return 0.0 if bool(np.all(on_grid)) else math.ldexp(1.0, int(grid))
    steps = np.where(np.all(on_grid, axis=axis, keepdims=True), 0.0, np.ldexp(1.0, grid))
    return steps


def _abs_sum(a: npt.ArrayLike | None, split, axis: int) -> np.ndarray:
    """Row (axis=1) or column (axis=0) sums of ``|a|``, real units (``|a_t|`` if pre-split)."""
    if a is None:
        offsets = split.components.offsets
        total = sum(split.abs_stats(i, axis=axis)[0] for i in range(split.partition.m))
        if offsets is None:
            return np.asarray(total)
        return np.ldexp(np.asarray(total), offsets.ravel())
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    return np.abs(arr).sum(axis=axis)


def largest_entry(static: float, w, x) -> float:
    """A bound in the shared units as one valid for every entry: times ``max 2**(s_a + t_b)``."""
    s, t = _offsets(w, x)
    top = _range(s)[1] + _range(t)[1]
    if static == 0 or top == 0:
        return static
    return math.inf if top > _EMAX else static * math.ldexp(1.0, top)
