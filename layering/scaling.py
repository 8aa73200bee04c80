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

Rounding. Powers of two scale exactly unless they under- or overflow. What may round is
the float64 accumulation (when ``2**53`` is too small for the grid span, as with 8 slices
of 7 bits), and the bound follows what it does (:meth:`.kernel.NumpyKernel.combine`):
every step of a resolution (one product, one GEMM of the pairs of one scale side by
side, or Karatsuba's three products) yields the exact sum of its pairs' products, in
integers or in a float dtype where they are exact, converted to float64 once (exact
below ``2**53``; int64 products beyond that round once, their Karatsuba sums formed in
int64 first) and multiplied by its power of two and the row's ``2**s_a`` (exact); the
steps of a resolution are added one by one in float64, the sum multiplied by the
column's ``2**t_b`` (exact), and added to the previous estimate. So each entry of
``Ω_r`` is a float64 sum, in some order, of at most ``pairs`` exactly known step values,
or ``2 pairs`` roundings with int64 products, each step's magnitude at most the sum of
its pairs' ``(|W_i| @ |X_j|)_ab``. Its rounding error is at most ``γ_n rowsum_a colmax_b``
with ``rowsum = Σ_i rowsum|W_i|``, ``colmax = Σ_j colmax|X_j|`` (which bound
``Σ_ij |W_i| @ |X_j|``), ``γ_n = n u / (1 - n u)``, ``u = 2**-53`` and ``n = pairs +
resolutions`` (``4 pairs + resolutions`` with int64 products: room to spare) for every
resolution at once, plus ``2**-1074`` per operation where something may underflow. That
term joins every bound as one more pair of rank-one factors, so a bound holds against
the true product, still never increases, and costs one pass like an unscaled one.

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

from .kernel import ProductKernel, Rescale
from .partition import Partition

__all__ = [
    "check_range",
    "check_scaling",
    "largest_entry",
    "ldexp_bound",
    "rescale_is_exact",
    "rescaling",
    "scaled_bound",
    "scaled_truncation_bound",
    "sum_slack",
]

_U = 2.0**-53  # unit roundoff of float64
_TINY = math.ldexp(1.0, -1074)  # the smallest subnormal: the most one underflow can lose
# float64 normal exponents: 2**e is normal for -1022 <= e <= 1023
_EMIN, _EMAX = -1022, 1023


def sum_slack(terms: int) -> float:
    """Relative room for a bound's float64 sum of ``terms`` non-negative products.

    A computed sum of ``q`` such products lies within ``(1 ± γ_{q+1})`` of the exact one,
    so ``1 + 2 (q + 2)**2 u`` covers it, and grows fast enough with ``q`` that a bound
    over fewer terms (a later resolution's, even when the pairs it dropped were zero)
    never comes out larger: ``(1 + γ_q)(1 + 2 (q + 1)**2 u) <= (1 - γ_{q+1})(1 + 2 (q +
    2)**2 u)``.

    Examples
    --------
    >>> sum_slack(3) < sum_slack(4) < 1 + 1e-13
    True
    """
    return 1.0 + 2 * (terms + 2) ** 2 * _U


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


def rescaling(w, x) -> Rescale | None:
    """The entrywise ``2**(s_a + t_b)`` of the product's terms; None when both are global."""
    s, t = w.components.offsets, x.components.offsets
    if s is None and t is None:
        return None
    return Rescale(s, t, rescale_is_exact(w, x))


def check_range(estimate: npt.ArrayLike, w, x) -> None:
    """Name an estimate that left the float64 range (possible only for offsets beyond it).

    Raises
    ------
    OverflowError
        If an entry of ``estimate`` is not finite.
    """
    if not bool(np.all(np.isfinite(np.asarray(estimate)))):
        s, t = _offsets(w, x)
        raise OverflowError(
            f"{w.name} @ {x.name} exceeds the float64 range (largest row offset of {w.name}"
            f" {_range(s)[1]}, largest column offset of {x.name} {_range(t)[1]})"
        )


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
    w, x, remaining, static: float | None, kernel: ProductKernel, pairs: int,
    resolutions: int, exact: bool,
):
    """The elementwise bound of a resolution in real units, for offsets whose powers of
    two stay normal (:func:`rescale_is_exact`), in the kernel's one pass.

    Each remaining pair's rank-one factors (``rowsum|W_i| colmax|X_j|`` and
    ``rowmax|W_i| colsum|X_j|``, or the static bound) are rescaled by ``2**s`` (rows) and
    ``2**t`` (columns) before the outer products, which is exact; the rounding term
    (when the estimate is not exact) and the underflow allowance are one more pair of
    factors each, added to both sides of the minimum. So the bound costs what an
    unscaled one does: two products of inner size ``#pairs + 2``, written once.

    Parameters
    ----------
    remaining : sequence of (i, j)
        Pairs not yet added.
    static : float or None
        The static bound in the shared units (``bound="static"``), or None for the data
        bound.
    pairs, resolutions : int
        Component pairs and resolutions of the whole product (for the rounding term).
    exact : bool
        Whether the estimates are exact (no rounding to account for).
    """
    s, t = _offsets(w, x)
    m, n = w.shape[0], x.shape[1]
    rows_sum: list[np.ndarray] = []  # (M,) factors, paired with (N,) ones below
    rows_max: list[np.ndarray] = []
    cols_max: list[np.ndarray] = []
    cols_sum: list[np.ndarray] = []
    if static is not None and remaining:
        rows_sum.append(np.full(m, static))
        rows_max.append(rows_sum[-1])
        cols_max.append(np.ones(n))
        cols_sum.append(cols_max[-1])
    elif remaining:
        for i, j in remaining:
            rows_sum.append(w.abs_stats(i, axis=1)[0])
            rows_max.append(w.abs_stats(i, axis=1)[1])
            cols_sum.append(x.abs_stats(j, axis=0)[0])
            cols_max.append(x.abs_stats(j, axis=0)[1])
    if not exact:
        rounding_rows, rounding_cols = _rounding_factors(w, x, pairs, resolutions)
        rows_sum.append(rounding_rows.ravel())
        rows_max.append(rows_sum[-1])
        cols_max.append(rounding_cols.ravel())
        cols_sum.append(cols_max[-1])
    if _underflow_possible(w, x):  # what rounding to subnormals may lose, per entry
        tiny = (2 * pairs + resolutions + 4 + len(rows_sum)) * _TINY
        rows_sum.append(np.full(m, tiny))
        rows_max.append(rows_sum[-1])
        cols_max.append(np.ones(n))
        cols_sum.append(cols_max[-1])
    if not rows_sum:
        return np.zeros((1, 1))
    row_scale = np.ldexp(1.0, s) if not isinstance(s, int) else 1.0  # (M, 1)
    col_scale = np.ldexp(1.0, t) if not isinstance(t, int) else 1.0  # (1, N)
    slack = sum_slack(len(rows_sum))  # the float64 sums of the outer products
    with np.errstate(over="ignore"):  # an infinite bound is still a bound
        return kernel.bound(
            np.stack(rows_sum, axis=1) * row_scale, np.stack(rows_max, axis=1) * row_scale,
            np.stack(cols_sum, axis=0) * col_scale, np.stack(cols_max, axis=0) * col_scale,
            slack,
        )


def ldexp_bound(
    bound: np.ndarray, w, x, pairs: int, resolutions: int, exact: bool
) -> np.ndarray:
    """A remaining-pairs bound in the shared units made a guarantee in real units, for
    offsets beyond the normal range of float64 (``ldexp`` entry by entry).

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


def scaled_truncation_bound(w, x, w_split: bool = False, x_split: bool = False
                            ) -> np.ndarray:
    """Elementwise bound on ``|W @ X - W_t @ X_t|`` for scaled partitions.

    ``W @ X - W_t X_t = ΔW X + W_t ΔX`` with ``|ΔW_ak| < δW_a``, the finest grid step of
    row ``a`` (0 when W was on its grids or given already split), and ``|ΔX_kb| < δX_b``
    likewise; with ``|X| <= |X_t| + δX`` the bound is
    ``δW_a (colsum|X_t|_b + K δX_b) + rowsum|W_t|_a δX_b``. The sums of ``|W_t|`` and
    ``|X_t|`` are those of the digits (also used by the data bounds), and whether anything
    was dropped comes from the split: nothing reads the operands again.

    Parameters
    ----------
    w, x : SplitOperand
        The operands split.
    w_split, x_split : bool
        Whether W (X) was given already split: it is its truncated value, nothing dropped.
    """
    k = w.shape[1]
    w_drop = 0.0 if w_split else _grid_step(w)
    x_drop = 0.0 if x_split else _grid_step(x)
    w_sum = _abs_sum(w, axis=1)[:, None]
    x_sum = _abs_sum(x, axis=0)[None, :]
    slack = 1.0 + 2 * (2 * w.partition.m + 2 * x.partition.m + 8) * _U
    with np.errstate(over="ignore"):  # an infinite bound is still a bound
        return (w_drop * (x_sum + k * x_drop) + w_sum * x_drop) * slack + 4 * _TINY


def _grid_step(split) -> np.ndarray | float:
    """The finest grid step of every row (column), or 0 if the split dropped nothing."""
    if split.components.off_grid is False:
        return 0.0
    offsets = split.components.offsets
    grid = split.partition.points[-1] + (0 if offsets is None else offsets)
    return np.ldexp(1.0, grid)  # 0 where the grid is below float64's: nothing dropped


def _abs_sum(split, axis: int) -> np.ndarray:
    """Row (axis=1) or column (axis=0) sums of ``|a_t|`` in real units (at least)."""
    offsets = split.components.offsets
    total = sum(split.abs_stats(i, axis=axis)[0] for i in range(split.partition.m))
    if offsets is None:
        return np.asarray(total)
    with np.errstate(over="ignore"):
        return np.ldexp(np.asarray(total), offsets.ravel())


def largest_entry(static: float, w, x) -> float:
    """A bound in the shared units as one valid for every entry: times ``max 2**(s_a + t_b)``."""
    s, t = _offsets(w, x)
    top = _range(s)[1] + _range(t)[1]
    if static == 0 or top == 0:
        return static
    return math.inf if top > _EMAX else static * math.ldexp(1.0, top)
