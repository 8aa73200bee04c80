"""Layered matrix products ``W @ X`` in successive resolutions, with guaranteed bounds.

Resolution ``r`` adds the component products of one group of an :class:`Ordering`::

    Ω_r = Ω_{r-1} + Σ_{(i, j) in group r} W_i @ X_j

Every component product is computed exactly on small integers (see :mod:`.kernel`) and
scaled by a power of two, so the final estimate equals the one-shot product of the
truncated operands bit for bit whenever that product is itself exact in float64 (checked,
and reported as ``exact``).

Examples
--------
>>> import numpy as np
>>> W = np.array([[3.0, -7.0], [12.0, 5.0]]); X = np.array([[1.0], [-2.0]])
>>> p = Partition((4, 2, 0))
>>> [res.estimate.ravel().tolist() for res in layered_matmul(W, X, p, p)]
[[0.0, 0.0], [8.0, 4.0], [17.0, 2.0]]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .kernel import ProductKernel, Rescale, over_row_blocks, resolve_kernel
from .ordering import Ordering, resolve_ordering
from .partition import Components, Partition
from .plan import ProductPlan, choose_reuse
from .scaling import (
    check_range,
    check_scaling,
    largest_entry,
    ldexp_bound,
    rescale_is_exact,
    rescaling,
    scaled_bound,
    scaled_truncation_bound,
    sum_slack,
)

__all__ = [
    "SplitOperand",
    "LayeredResult",
    "layered_matmul",
    "prepare_block",
    "resolution_block",
    "static_bound",
    "truncation_bound",
    "float64_exact",
    "BOUND_KINDS",
]

BOUND_KINDS = ("data", "static")


class SplitOperand:
    """An operand split once under a partition, reusable across products.

    Holds the digits of every component, their conversions for the kernel (made on first
    use and cached) and the magnitude statistics the data-dependent bound needs.

    Parameters
    ----------
    a : array_like
        A 2-D array (a 1-D X is treated as a column).
    partition : Partition
    clip : bool
        Clip out-of-range values (counted) instead of raising.
    name : str
        Name used in error messages ("W" or "X").
    """

    def __init__(
        self, a: npt.ArrayLike, partition: Partition, *, clip: bool = False, name: str = "a"
    ) -> None:
        arr = np.asarray(a)
        if arr.ndim == 1 and name == "X":
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{name} is empty (shape {arr.shape})")
        # the left operand's bounds read its rows' digit statistics: found while splitting
        components = partition.components(arr, clip=clip, name=name, row_stats=name != "X")
        self._hold(components, partition, name)

    @classmethod
    def from_components(
        cls, components: Components, partition: Partition, *, name: str = "a"
    ) -> SplitOperand:
        """An operand already split under ``partition`` (digits stored on disk, say).

        Raises
        ------
        ValueError
            If the digits are not 2-D arrays of one shape, or do not match ``partition``.

        Examples
        --------
        >>> p = Partition((4, 2, 0))
        >>> a = SplitOperand.from_components(p.components([[5.0, -7.0]]), p)
        >>> a.shape
        (1, 2)
        """
        shapes = {np.shape(d) for d in components.digits}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"{name}: component digits must be 2-D of one shape, got {shapes}")
        offsets = partition.offsets_for(next(iter(shapes)), name)
        if (components.exponents, components.widths) != (
            partition.exponents, partition.widths
        ) or not _same_offsets(components.offsets, offsets):
            raise ValueError(
                f"{name}: components have exponents {components.exponents} and widths"
                f" {components.widths}, which do not match partition {partition!r}"
            )
        if 0 in next(iter(shapes)):
            raise ValueError(f"{name} is empty (shape {next(iter(shapes))})")
        operand = cls.__new__(cls)
        operand._hold(components, partition, name)
        return operand

    def _hold(self, components: Components, partition: Partition, name: str) -> None:
        shape = np.shape(components.digits[0])
        self.name = name
        self.partition = partition
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.components: Components = components
        self._prepared: dict[tuple[object, ...], Any] = {}
        self._abs_max: float | None = None
        for i, stats in enumerate(components.row_stats or ()):
            found = stats.astype(np.float64)
            found *= math.ldexp(1.0, components.exponents[i])  # as _abs_stats gives them
            self._prepared[("stats", i, 1)] = found

    @property
    def clipped(self) -> int:
        return self.components.clipped

    @property
    def nbytes(self) -> int:
        """Bytes held: the digits, and the kernel conversions and statistics made so far
        (numpy arrays or the kernel's tensors)."""
        def size(value: object) -> int:
            if isinstance(value, tuple | list):
                return sum(size(v) for v in value)
            return int(getattr(value, "nbytes", 0))

        return size(list(self.components.digits)) + size(list(self._prepared.values()))

    def prepared(self, i: int, dtype: np.dtype, kernel: ProductKernel) -> Any:
        key = ("digits", i, kernel.name, dtype.str)
        if key not in self._prepared:
            self._prepared[key] = kernel.prepare(self.components.digits[i], dtype)
        return self._prepared[key]

    def prepared_sum(self, a: int, b: int, dtype: np.dtype, kernel: ProductKernel) -> Any:
        """Digits of components ``a`` and ``b`` added (unscaled), prepared for the kernel."""
        key = ("sum", a, b, kernel.name, dtype.str)
        if key not in self._prepared:
            digits = self.components.digits
            # added in the kernel's dtype, in one pass: the plan chose ``dtype`` to hold
            # the summed digits exactly (small integers, in floats too)
            summed = np.add(digits[a], digits[b], dtype=dtype)
            self._prepared[key] = kernel.prepare(summed, dtype)
        return self._prepared[key]

    def prepared_joined(
        self, indices: tuple[int, ...], axis: int, dtype: np.dtype, kernel: ProductKernel
    ) -> Any:
        """Digits of components ``indices`` side by side along ``axis``, prepared."""
        key = ("joined", indices, axis, kernel.name, dtype.str)
        if key not in self._prepared:
            digits = self.components.digits
            joined = np.concatenate([digits[i] for i in indices], axis=axis)
            self._prepared[key] = kernel.prepare(joined, dtype)
        return self._prepared[key]

    def max_digit(self, i: int) -> int:
        """Largest possible |digit| of component ``i`` (from the partition)."""
        return (1 << self.components.widths[i]) - 1

    def abs_stats(self, i: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """(sum, max) of |component i| along ``axis``, in real units (exact float64)."""
        key = ("stats", i, axis)
        if key not in self._prepared:
            self._prepared[key] = _abs_stats(self.components.digits[i], axis,
                                             math.ldexp(1.0, self.components.exponents[i]))
        s = self._prepared[key]
        return s[0], s[1]

    def truncated_abs_max(self) -> float:
        if self._abs_max is None:
            total = np.zeros(self.shape, dtype=np.float64)
            for i in range(self.partition.m):
                total += self.components.value(i)
            self._abs_max = float(np.max(np.abs(total)))
        return self._abs_max


def _abs_stats(digits: np.ndarray, axis: int, scale: float) -> np.ndarray:
    """``[sum, max]`` of ``|digits|`` along ``axis``, times ``scale``, as float64 (exact).

    Integer arithmetic (``|digit|`` fits the digits' own dtype), rows on every core.
    """
    lines = digits.shape[1 - axis]
    stats = np.empty((2, lines), dtype=np.float64)
    wide = np.int32 if digits.shape[axis] * (1 << (8 * digits.itemsize - 1)) < 2**31 else np.int64

    def block(start: int, stop: int) -> None:
        part = digits[start:stop] if axis == 1 else digits[:, start:stop]
        mag = np.abs(part)
        stats[0, start:stop] = mag.sum(axis=axis, dtype=wide)
        stats[1, start:stop] = mag.max(axis=axis)

    over_row_blocks(lines, max(1, (1 << 16) // max(1, digits.shape[axis])), block)
    stats *= scale
    return stats


@dataclass(frozen=True)
class LayeredResult:
    """One resolution of a layered product.

    Attributes
    ----------
    resolution : int
        1-based resolution index r.
    resolutions : int
        Total number of resolutions R.
    estimate : ndarray
        Ω_r, float64, shape (M, N).
    bound : ndarray
        Guaranteed elementwise bound on ``|W_t @ X_t - Ω_r|`` (W_t, X_t the truncated
        operands); broadcastable to ``estimate`` (a 0-d array for the static bound).
    static_bound : float
        The static bound of the method, ``K * Σ_{pairs not added} c^W_i c^X_j`` (with
        per-row or per-column partitions, its largest entry).
    truncation_bound : float or ndarray
        Bound on ``|W @ X - W_t @ X_t|`` from what the partitions dropped (0 for operands
        already on their grids); elementwise (broadcastable to ``estimate``) with per-row
        or per-column partitions.
    pairs : tuple of (i, j)
        Component pairs this resolution added.
    bit_ops : int
        Cost of this resolution in the bit-operation model (a b1-bit by b2-bit multiply
        costs b1*b2), ``M*K*N*Σ b^W_i b^X_j`` over the added pairs.
    flops : int
        Floating-point (or integer) multiply-adds actually executed, times two. A product
        plan may compute a later resolution's product early (see :mod:`.plan`), so a
        resolution can report more or fewer flops than its own pairs need.
    exact : bool
        Whether every step was exact arithmetic (so the final estimate equals the
        truncated one-shot product bit for bit).
    """

    resolution: int
    resolutions: int
    estimate: np.ndarray
    bound: np.ndarray
    static_bound: float
    truncation_bound: float | np.ndarray
    pairs: tuple[tuple[int, int], ...]
    bit_ops: int
    flops: int
    exact: bool
    dtypes: tuple[str, ...] = field(default=())

    @property
    def final(self) -> bool:
        return self.resolution == self.resolutions

    @property
    def max_bound(self) -> float:
        return float(self.bound.max())


def static_bound(
    pw: Partition, px: Partition, inner: int, pairs: Iterable[tuple[int, int]]
) -> float:
    """``inner * Σ c^W_i c^X_j`` over ``pairs``: the static bound of METHOD §3."""
    return float(
        inner * sum(pw.component_bound(i) * px.component_bound(j) for i, j in pairs)
    )


def truncation_bound(
    inner: int, w_drop: float, x_drop: float, w_abs_max: float, x_abs_max: float
) -> float:
    """Bound on ``|W @ X - W_t @ X_t|``: ``K (δ_W max|X| + δ_X max|W|)``.

    ``δ`` bounds what truncation dropped from each entry: below the finest grid step
    ``2**p_m`` of the partition, and 0 when the operand is already on its grid.
    """
    return float(inner * (w_drop * x_abs_max + x_drop * w_abs_max))


def float64_exact(
    inner: int, w_step: float, x_step: float, w_abs_max: float, x_abs_max: float
) -> bool:
    """Is every float64 product ``W @ X`` of operands on grids of steps ``w_step`` and
    ``x_step`` exact, whatever the order of its sums?

    Each term and each partial sum is a multiple of ``w_step * x_step`` (both powers of
    two) of magnitude at most ``inner * max|W| * max|X|``: float64 holds all of them
    exactly when that is at most ``2**53`` steps and the step itself is a normal number.

    >>> float64_exact(2048, 1.0, 1.0, 128, 128)
    True
    >>> float64_exact(2**20, 1.0, 1.0, 2**20, 2**20)
    False
    """
    step = w_step * x_step
    return step >= 2.0**-1022 and inner * w_abs_max * x_abs_max <= 2.0**53 * step


def _as_split(
    a: npt.ArrayLike | SplitOperand, partition: Partition, clip: bool, name: str
) -> SplitOperand:
    if isinstance(a, SplitOperand):
        if a.partition != partition:
            raise ValueError(
                f"{name} was split under {a.partition.points}, not {partition.points}"
            )
        return a
    return SplitOperand(a, partition, clip=clip, name=name)


def layered_matmul(
    W: npt.ArrayLike | SplitOperand,
    X: npt.ArrayLike | SplitOperand,
    pw: Partition,
    px: Partition,
    ordering: str | Ordering | Iterable[Iterable[Sequence[int]]] = "anti-diagonal",
    *,
    bound: str = "data",
    clip: bool = False,
    kernel: str | ProductKernel | None = "auto",
    reuse: str = "auto",
    device: str | None = None,
    to_host: bool = True,
) -> Iterator[LayeredResult]:
    """Compute ``W @ X`` in successive resolutions.

    Parameters
    ----------
    W : array_like (M, K) or SplitOperand
    X : array_like (K, N) or (K,), or SplitOperand
    pw, px : Partition
        Partitions of W and X: global, or per row of W (``axis=1``) and per column of X
        (``axis=0``), whose offsets are applied entry by entry (see :mod:`.scaling`).
    ordering : {"anti-diagonal", "one-per-resolution", "shells"}, Ordering, or groups
        Which component products each resolution adds. Explicit groups are lists of
        0-based ``(i, j)`` pairs, validated disjoint and complete.
    bound : {"data", "static"}
        ``"static"`` reports the method's bound ``K Σ c^W_i c^X_j`` (a scalar);
        ``"data"`` (default) a tighter elementwise bound from the magnitudes of the
        components not yet added: for entry (a, b) the smaller of
        ``Σ rowsum|W_i|[a] colmax|X_j|[b]`` and ``Σ rowmax|W_i|[a] colsum|X_j|[b]``.
    clip : bool
        Clip values outside a partition's range (and count them) instead of raising.
    kernel : {"auto", "numpy", "torch"} or ProductKernel
        The product backend (see :func:`.kernel.resolve_kernel`): ``"auto"`` (default)
        the fastest one that is exact on this machine. Every kernel is exact, so the
        choice never changes an estimate or a bound.
    reuse : {"auto", "none", "karatsuba", "panel"}
        How the exact component products are obtained (see :mod:`.plan`); every choice
        gives bit-identical estimates. ``"auto"`` reads each W component once for thin X
        and uses Karatsuba's identity otherwise.
    device : {"cpu", "cuda"}, optional
        Where the products run (None: the kernel's choice).
    to_host : bool
        Return estimates and bounds as numpy arrays (default). With False a GPU kernel
        leaves them on the device (torch tensors), so no resolution waits for a copy.

    Yields
    ------
    LayeredResult
        One per resolution, with the estimate, its guaranteed bound and its cost. Each
        estimate is a new array that later resolutions read but never modify.

    Raises
    ------
    ValueError
        On shape mismatch, empty operands, NaN/inf, unknown ordering or bound kind.
    PartitionRangeError
        On a value outside a partition's range (unless ``clip=True``).

    Notes
    -----
    Implements the linear layering of Esfahanizadeh, Cohen, Shamai and Médard,
    "Successive Refinement in Large-Scale Computation" (METHOD §3).
    """
    if bound not in BOUND_KINDS:
        raise ValueError(f"unknown bound kind {bound!r}; use one of {BOUND_KINDS}")
    w_shape, x_shape = _shape_of(W), _shape_of(X)
    _check_shapes(w_shape, x_shape)
    check_scaling(pw, px)
    order = resolve_ordering(ordering, pw, px)
    engine = resolve_kernel("auto" if kernel is None else kernel, device)
    w = _as_split(W, pw, clip, "W")
    x = _as_split(X, px, clip, "X")
    k, n = w.shape[1], x.shape[1]
    trunc: float | np.ndarray
    if pw.scaled or px.scaled:
        trunc = scaled_truncation_bound(w, x, isinstance(W, SplitOperand),
                                        isinstance(X, SplitOperand))
    else:
        w_drop, w_abs = _truncation_drop(W, w)
        x_drop, x_abs = _truncation_drop(X, x)
        trunc = truncation_bound(k, w_drop, x_drop, w_abs, x_abs)
    plan = ProductPlan(w, x, order, engine, choose_reuse(reuse, n, px.m))
    scales = rescaling(w, x)
    omega = None
    for r in range(1, order.resolutions + 1):
        # a new array each resolution: the one yielded before stays the caller's
        omega, flops, dtypes = plan.resolution(r - 1, omega, scales)
        yield _result(w, x, order, r, omega, flops, dtypes, bound, trunc, engine, to_host,
                      scales)


def prepare_block(
    w: SplitOperand,
    x: SplitOperand,
    order: Ordering,
    *,
    kernel: str | ProductKernel | None = "auto",
    reuse: str = "none",
    device: str | None = None,
) -> None:
    """Convert the digits of a block of W's rows and of X for the kernel, in every form
    :func:`resolution_block` will use for ``order`` (cached on the operands).

    A worker that keeps its blocks' splits does this while it prepares them, so its
    resolutions start with their products. Changes no result: the resolutions convert
    whatever is missing themselves.

    Examples
    --------
    >>> p = Partition((4, 2, 0)); order = Ordering.anti_diagonal(2, 2)
    >>> w = SplitOperand([[12.0, -7.0]], p, name="W")
    >>> x = SplitOperand([[4.0], [-8.0]], p, name="X")
    >>> prepare_block(w, x, order, kernel="numpy")
    >>> float(resolution_block(w, x, order, 1, kernel="numpy")[0].estimate[0, 0])
    80.0
    """
    _check_shapes(w.shape, x.shape)
    engine = resolve_kernel("auto" if kernel is None else kernel, device)
    ProductPlan(w, x, order, engine, choose_reuse(reuse, x.shape[1], x.partition.m)).prepare()


def resolution_block(
    w: SplitOperand,
    x: SplitOperand,
    order: Ordering,
    resolution: int,
    previous: npt.ArrayLike | None = None,
    *,
    bound: str = "data",
    kernel: str | ProductKernel | None = "auto",
    truncation: float | np.ndarray = 0.0,
    kept: dict[tuple[int, int], Any] | None = None,
    reuse: str = "none",
    device: str | None = None,
    to_host: bool = True,
) -> tuple[LayeredResult, dict[tuple[int, int], Any]]:
    """One resolution of ``W @ X`` for a block of W's rows, from the previous estimate.

    ``Ω_r = Ω_{r-1} + Σ_{(i, j) in group r} W_i X_j`` for the rows ``w`` holds, with the
    bound and cost of those rows. This is the unit of work a distributed layered product
    fans out: the estimate equals the same rows of :func:`layered_matmul`'s ``Ω_r`` bit for
    bit whenever the product is exact (``exact``), and the data-dependent bound of a row
    depends only on that row.

    Parameters
    ----------
    w : SplitOperand
        A block of rows of W (all K columns).
    x : SplitOperand
        All of X.
    order : Ordering
        The ordering of the whole product.
    resolution : int
        1-based resolution ``r`` to compute.
    previous : array_like (rows, N), optional
        ``Ω_{r-1}`` of these rows; None means zeros (required for ``r = 1``).
    bound : {"data", "static"}
    kernel : {"auto", "numpy", "torch"} or ProductKernel
        As for :func:`layered_matmul`.
    truncation : float or ndarray
        The product's truncation bound, reported as is (it needs the whole operands); for
        per-row partitions, these rows' entries.
    kept : dict, optional
        Products the previous resolution of these rows kept for later ones (the second
        value this function returned then); None or a partial dict is always correct,
        the missing products are computed.
    reuse : {"none", "karatsuba", "panel", "auto"}
        Product plan (see :mod:`.plan`); with ``kept`` carried from resolution to
        resolution a block does the same GEMMs as :func:`layered_matmul`.
    device : {"cpu", "cuda"}, optional
    to_host : bool
        As for :func:`layered_matmul`.

    Returns
    -------
    (LayeredResult, dict)
        The result for these rows (``bit_ops`` and ``flops`` count these rows only), and
        the products kept for the next resolution.

    Examples
    --------
    >>> W = np.array([[3.0, -7.0], [12.0, 5.0]]); X = np.array([[1.0], [-2.0]])
    >>> p = Partition((4, 2, 0)); order = Ordering.anti_diagonal(2, 2)
    >>> x = SplitOperand(X, p, name="X")
    >>> first, kept = resolution_block(SplitOperand(W[1:], p, name="W"), x, order, 1)
    >>> second, kept = resolution_block(SplitOperand(W[1:], p, name="W"), x, order, 2,
    ...                                 first.estimate, kept=kept)
    >>> second.estimate.ravel().tolist()
    [4.0]
    """
    if bound not in BOUND_KINDS:
        raise ValueError(f"unknown bound kind {bound!r}; use one of {BOUND_KINDS}")
    if not 1 <= resolution <= order.resolutions:
        raise ValueError(f"resolution must be in [1, {order.resolutions}], got {resolution}")
    _check_shapes(w.shape, x.shape)
    check_scaling(w.partition, x.partition)
    rows, n = w.shape[0], x.shape[1]
    if previous is not None:
        if tuple(np.shape(previous)) != (rows, n):
            raise ValueError(
                f"previous estimate has shape {tuple(np.shape(previous))}, expected {(rows, n)}"
            )
    elif resolution > 1:
        raise ValueError(f"resolution {resolution} needs the previous estimate")
    strategy = choose_reuse(reuse, n, x.partition.m)
    if strategy != "none" and resolution > 1 and not kept:
        # Nothing carried over (first call here, or a lost worker): reuse would compute
        # products for later resolutions that nobody may keep. Plain products instead.
        strategy = "none"
    engine = resolve_kernel("auto" if kernel is None else kernel, device)
    plan = ProductPlan(w, x, order, engine, strategy, kept=kept)
    scales = rescaling(w, x)
    omega, flops, dtypes = plan.resolution(resolution - 1, previous, scales)
    result = _result(w, x, order, resolution, omega, flops, dtypes, bound, truncation,
                     engine, to_host, scales)
    return result, plan.kept


def _result(
    w: SplitOperand,
    x: SplitOperand,
    order: Ordering,
    r: int,
    estimate: np.ndarray,
    flops: int,
    dtypes: tuple[str, ...],
    bound: str,
    truncation: float | np.ndarray,
    kernel: ProductKernel,
    to_host: bool,
    scales: Rescale | None = None,
) -> LayeredResult:
    """The :class:`LayeredResult` of resolution ``r`` with estimate ``estimate``."""
    (m, k), n = w.shape, x.shape[1]
    pw, px = w.partition, x.partition
    group, remaining = order.groups[r - 1], order.remaining(r)
    exact = _accumulation_is_exact(pw, px, k) and (
        scales.exact if scales is not None else rescale_is_exact(w, x))
    if to_host:
        estimate = kernel.to_host(estimate)
    if scales is not None and not scales.exact:
        check_range(kernel.to_host(estimate), w, x)
    static = static_bound(pw, px, k, remaining)
    if scales is None and exact:  # one global partition, exact sums: the lean path
        bounds = _bound(w, x, remaining, bound, kernel)
    elif scales is None or scales.exact:  # rescale and rounding folded into the factors
        bounds = scaled_bound(w, x, remaining, static if bound == "static" else None, kernel,
                              len(order.remaining(0)), order.resolutions, exact)
    else:  # offsets beyond float64's normal range: ldexp entry by entry
        bounds = ldexp_bound(kernel.to_host(_bound(w, x, remaining, bound, kernel)), w, x,
                             len(order.remaining(0)), order.resolutions, exact)
    if to_host:
        bounds = kernel.to_host(bounds)
    return LayeredResult(
        resolution=r,
        resolutions=order.resolutions,
        estimate=estimate,
        bound=bounds,
        static_bound=largest_entry(static, w, x),
        truncation_bound=truncation,
        pairs=group,
        bit_ops=m * k * n * sum(pw.widths[i] * px.widths[j] for i, j in group),
        flops=flops,
        exact=exact,
        dtypes=dtypes,
    )


def _same_offsets(given: np.ndarray | None, expected: np.ndarray | None) -> bool:
    if given is None or expected is None:
        return given is None and expected is None
    return bool(np.array_equal(given, expected))


def _shape_of(a: npt.ArrayLike | SplitOperand) -> tuple[int, ...]:
    return a.shape if isinstance(a, SplitOperand) else np.shape(a)


def _check_shapes(w_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> None:
    if len(w_shape) != 2:
        raise ValueError(f"W must be a 2-D array, got shape {w_shape}")
    if len(x_shape) not in (1, 2):
        raise ValueError(f"X must be a 1-D or 2-D array, got shape {x_shape}")
    if w_shape[1] != x_shape[0]:
        raise ValueError(
            f"shape mismatch: W is {w_shape} and X is {x_shape}; W's columns ({w_shape[1]})"
            f" must equal X's rows ({x_shape[0]})"
        )


def _accumulation_is_exact(pw: Partition, px: Partition, inner: int) -> bool:
    """Is every partial sum of Ω an integer multiple of the finest grid below 2**53?"""
    span = (pw.points[0] - pw.points[-1]) + (px.points[0] - px.points[-1])
    return inner * ((1 << span) - 1) < 2**53


def _truncation_drop(a: npt.ArrayLike | SplitOperand, split: SplitOperand
                     ) -> tuple[float, float]:
    """(bound on what truncation drops per entry, max |a|) of an original operand."""
    if isinstance(a, SplitOperand):
        # A pre-split operand is its truncated value: nothing more is dropped.
        return 0.0, a.truncated_abs_max()
    p, comps = split.partition, split.components
    if comps.abs_max is not None and comps.off_grid is not None:
        return (p.resolution if comps.off_grid else 0.0), comps.abs_max  # from the split
    mag = np.abs(np.asarray(a, dtype=np.float64))
    on_grid = bool(np.all(np.ldexp(np.floor(np.ldexp(mag, -p.points[-1])), p.points[-1]) == mag))
    return (0.0 if on_grid else p.resolution), float(mag.max())


def _bound(
    w: SplitOperand, x: SplitOperand, remaining: Sequence[tuple[int, int]], kind: str,
    kernel: ProductKernel,
) -> Any:
    if not remaining:
        return np.zeros((1, 1)) if kind == "data" else np.asarray(0.0)
    if kind == "static":
        return np.asarray(static_bound(w.partition, x.partition, w.shape[1], remaining))
    # Σ over remaining pairs of outer products, as two tiny GEMMs with inner size #pairs.
    row_sum = np.stack([w.abs_stats(i, axis=1)[0] for i, _ in remaining], axis=1)
    row_max = np.stack([w.abs_stats(i, axis=1)[1] for i, _ in remaining], axis=1)
    col_sum = np.stack([x.abs_stats(j, axis=0)[0] for _, j in remaining], axis=0)
    col_max = np.stack([x.abs_stats(j, axis=0)[1] for _, j in remaining], axis=0)
    return kernel.bound(row_sum, row_max, col_sum, col_max, sum_slack(len(remaining)))
