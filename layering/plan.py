"""Product plans: how the component products of each resolution are obtained.

The estimate of every resolution is fixed by the ordering; a plan only decides which
exact integer GEMMs produce it, and keeps a product computed early until the resolution
that adds it. Three strategies:

``"none"``
    one GEMM per component pair, when its resolution comes.
``"karatsuba"``
    a resolution that adds both ``(a, b)`` and ``(b, a)`` gets their sum from one GEMM,
    ``(W_a + W_b)(X_a + X_b) - W_a X_a - W_b X_b``, reusing the diagonal products (computed
    once, kept for the resolution that adds them). For the 2x2 anti-diagonal ordering this
    is 3 GEMMs instead of 4, and the last resolution costs nothing. It applies when both
    terms share one scale (``p^W_a - p^W_b = p^X_a - p^X_b``) and the summed digits keep
    the same exact arithmetic. Other pairs of one resolution that share a scale are one
    GEMM with the components side by side, ``[W_a | W_b] @ [X_b ; X_a]``, where the
    longer partial sums keep the same exact arithmetic (int8 digits too wide to add, say).
``"panel"``
    for a thin X (memory-bound products), a W component read after the first resolution
    is multiplied by every X component still needed while it is in cache, so it is read
    from memory once. The first resolution computes only its own product, to keep the
    time to the first estimate minimal.

All strategies give bit-identical estimates: every product is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .kernel import ProductKernel, Rescale
from .ordering import Ordering

__all__ = ["ProductPlan", "REUSE_STRATEGIES", "choose_reuse"]

REUSE_STRATEGIES = ("auto", "none", "karatsuba", "panel")

# X narrower than this (columns times components) makes W @ X memory-bound: reading a
# W component dominates, so multiplying it by all X components at once is nearly free.
_PANEL_MAX_COLUMNS = 8


@dataclass(frozen=True)
class _Step:
    """Add the product of pair (a, b); with ``symmetric`` the pairs (a, b) and (b, a) by
    Karatsuba's identity; with ``joined`` every pair of ``pairs`` from one GEMM."""

    a: int
    b: int
    symmetric: bool = False
    pairs: tuple[tuple[int, int], ...] = ()

    @property
    def joined(self) -> bool:
        return len(self.pairs) > 1


def choose_reuse(reuse: str, n_columns: int, m_x: int) -> str:
    """Resolve ``"auto"``: panel for thin X, Karatsuba otherwise."""
    if reuse not in REUSE_STRATEGIES:
        raise ValueError(f"unknown reuse strategy {reuse!r}; use one of {REUSE_STRATEGIES}")
    if reuse != "auto":
        return reuse
    return "panel" if n_columns * m_x <= _PANEL_MAX_COLUMNS else "karatsuba"


class ProductPlan:
    """Exact digit-unit component products for each resolution of an ordering.

    Parameters
    ----------
    w, x : SplitOperand
        The split operands.
    order : Ordering
    kernel : ProductKernel
    reuse : {"none", "karatsuba", "panel"}
    kept : dict, optional
        Products kept by an earlier plan of the same operands (see :attr:`kept`), so a
        plan can go on where another stopped, in another call or process. A product
        missing from it is simply computed when needed: reuse never changes results.
    """

    def __init__(
        self,
        w,
        x,
        order: Ordering,
        kernel: ProductKernel,
        reuse: str,
        kept: dict[tuple[int, int], Any] | None = None,
    ) -> None:
        self.w, self.x, self.kernel, self.reuse = w, x, kernel, reuse
        self.inner = w.shape[1]
        self.steps = [self._plan_group(group) for group in order.groups]
        # the last resolution at which each product is used; it is dropped after that
        self._last_use: dict[tuple[int, int], int] = {}
        for r, steps in enumerate(self.steps):
            for step in steps:
                for pair in self._uses(step):
                    self._last_use[pair] = r
        self._kept: dict[tuple[int, int], Any] = dict(kept or {})

    @property
    def kept(self) -> dict[tuple[int, int], Any]:
        """Digit-unit products computed early and kept for a later resolution."""
        return dict(self._kept)

    # ------------------------------------------------------------------ planning
    def _dtype(self, max_w: int, max_x: int) -> np.dtype:
        return self.kernel.dtype_for(self.inner * max_w * max_x, max(max_w, max_x))

    def _sum_dtype(self, a: int, b: int) -> np.dtype:
        """The dtype of Karatsuba's product of components ``a + b`` of both operands."""
        return self._dtype(self.w.max_digit(a) + self.w.max_digit(b),
                           self.x.max_digit(a) + self.x.max_digit(b))

    def _symmetric_ok(self, a: int, b: int) -> bool:
        ew, ex = self.w.components.exponents, self.x.components.exponents
        if ew[a] - ew[b] != ex[a] - ex[b]:
            return False
        wa, wb, xa, xb = (self.w.max_digit(a), self.w.max_digit(b),
                          self.x.max_digit(a), self.x.max_digit(b))
        pair_dtype = self.kernel.dtype_for(
            self.inner * max(wa * xb, wb * xa), max(wa, wb, xa, xb))
        return self._sum_dtype(a, b) == pair_dtype

    def _plan_group(self, group: tuple[tuple[int, int], ...]) -> list[_Step]:
        pending = list(group)
        steps: list[_Step] = []
        if self.reuse == "karatsuba":
            for a, b in group:
                if a < b and (b, a) in pending and self._symmetric_ok(a, b):
                    steps.append(_Step(a, b, symmetric=True))
                    pending.remove((a, b))
                    pending.remove((b, a))
            steps.extend(self._joined_steps(pending))
        else:
            steps.extend(_Step(i, j) for i, j in pending)
        return steps

    def _joined_steps(self, pairs: list[tuple[int, int]]) -> list[_Step]:
        """Pairs of one scale as one GEMM, ``[W_a | W_b] @ [X_b ; X_a]``, where that is
        exact in the arithmetic the pairs would each use; the others one by one."""
        ew, ex = self.w.components.exponents, self.x.components.exponents
        by_scale: dict[int, list[tuple[int, int]]] = {}
        for i, j in pairs:
            by_scale.setdefault(ew[i] + ex[j], []).append((i, j))
        steps = []
        for same in by_scale.values():
            if len(same) > 1 and self._joined_ok(same):
                steps.append(_Step(*same[0], pairs=tuple(same)))
            else:
                steps.extend(_Step(i, j) for i, j in same)
        return steps

    def _joined_dtype(self, pairs: Sequence[tuple[int, int]]) -> np.dtype:
        """The dtype of one GEMM of ``pairs`` side by side (their partial sums add up)."""
        maxima = [(self.w.max_digit(i), self.x.max_digit(j)) for i, j in pairs]
        return self.kernel.dtype_for(self.inner * sum(a * b for a, b in maxima),
                                     max(max(a, b) for a, b in maxima))

    def _joined_ok(self, pairs: list[tuple[int, int]]) -> bool:
        joined = self._joined_dtype(pairs)
        return all(self._dtype(self.w.max_digit(i), self.x.max_digit(j)) == joined
                   for i, j in pairs)

    @staticmethod
    def _uses(step: _Step) -> list[tuple[int, int]]:
        if step.joined:
            return []
        if step.symmetric:
            return [(step.a, step.a), (step.b, step.b)]
        return [(step.a, step.b)]

    # ------------------------------------------------------------------ execution
    def prepare(self) -> None:
        """Convert the digits for the kernel in every form the resolutions will use, now
        (the operands cache them): the conversions then cost nothing on the resolutions'
        path. Thin products (``panel``) convert W in cache as they go: W is left as is."""
        for steps in self.steps:
            for step in steps:
                a, b = step.a, step.b
                if step.symmetric:
                    dtype = self._sum_dtype(a, b)
                    self.w.prepared_sum(a, b, dtype, self.kernel)
                    self.x.prepared_sum(a, b, dtype, self.kernel)
                elif step.joined:
                    dtype = self._joined_dtype(step.pairs)
                    self.w.prepared_joined(tuple(i for i, _ in step.pairs), 1, dtype,
                                           self.kernel)
                    self.x.prepared_joined(tuple(j for _, j in step.pairs), 0, dtype,
                                           self.kernel)
                for i, j in self._uses(step):
                    dtype = self._dtype(self.w.max_digit(i), self.x.max_digit(j))
                    if self.reuse != "panel":
                        self.w.prepared(i, dtype, self.kernel)
                    self.x.prepared(j, dtype, self.kernel)

    def resolution(self, r: int, previous: Any = None, rescale: Rescale | None = None
                   ) -> tuple[Any, int, tuple[str, ...]]:
        """``previous`` plus the scaled sum resolution ``r`` (0-based) adds, as a new float64
        array (``previous`` None for zeros), the flops executed and the dtypes used.

        ``rescale``: per-row and per-column powers of two applied to the sum, entry by
        entry, while it is written (scaled partitions)."""
        m, n = self.w.shape[0], self.x.shape[1]
        flops = 0
        dtypes: list[str] = []
        ew, ex = self.w.components.exponents, self.x.components.exponents
        terms: list[tuple[int, list[tuple[int, Any]]]] = []
        for step in self.steps[r]:
            a, b = step.a, step.b
            if step.symmetric:
                dtype = self._sum_dtype(a, b)
                s = self.kernel.product(self.w.prepared_sum(a, b, dtype, self.kernel),
                                        self.x.prepared_sum(a, b, dtype, self.kernel))
                flops += 2 * m * self.inner * n
                dtypes.append(dtype.name)
                signed: list[tuple[int, Any]] = [(1, s)]
                for pair in ((a, a), (b, b)):
                    product, f, d = self._product(pair, r)
                    signed.append((-1, product))
                    flops += f
                    dtypes.extend(d)
            elif step.joined:
                rows, columns = tuple(i for i, _ in step.pairs), tuple(j for _, j in step.pairs)
                dtype = self._joined_dtype(step.pairs)
                signed = [(1, self.kernel.product(
                    self.w.prepared_joined(rows, 1, dtype, self.kernel),
                    self.x.prepared_joined(columns, 0, dtype, self.kernel)))]
                flops += 2 * m * self.inner * n * len(step.pairs)
                dtypes.append(dtype.name)
            else:
                product, flops_, d = self._product((a, b), r)
                signed = [(1, product)]
                flops += flops_
                dtypes.extend(d)
            terms.append((ew[a] + ex[b], signed))
        return self.kernel.combine(terms, previous, rescale), flops, tuple(dtypes)

    def _product(self, pair: tuple[int, int], r: int) -> tuple[Any, int, list[str]]:
        """Digit-unit product of ``pair``, computing it (and kept ones) if needed."""
        flops: int = 0
        dtypes: list[str] = []
        if pair not in self._kept:
            flops, dtypes = self._compute(pair, r)
        product = self._kept[pair]
        if self._last_use.get(pair, -1) <= r:
            del self._kept[pair]
        return product, flops, dtypes

    def _compute(self, pair: tuple[int, int], r: int) -> tuple[int, list[str]]:
        i, j = pair
        columns = [j]
        if self.reuse == "panel" and r > 0:
            columns += [
                jj for (ii, jj), last in self._last_use.items()
                if ii == i and jj != j and last > r and (ii, jj) not in self._kept
            ]
        dtype = self._dtype(self.w.max_digit(i), max(self.x.max_digit(jj) for jj in columns))
        rights = [self.x.prepared(jj, dtype, self.kernel) for jj in columns]
        # thin X: W's narrow digits converted in cache beat reading converted ones
        streamed = getattr(self.kernel, "streamed_products", None)
        outs = streamed(self.w.components.digits[i], dtype, rights) if (
            self.reuse == "panel" and streamed is not None) else None
        if outs is None:
            left = self.w.prepared(i, dtype, self.kernel)
            if len(rights) == 1:
                outs = [self.kernel.product(left, rights[0])]
            else:
                outs = self.kernel.products(left, rights)
        for jj, out in zip(columns, outs, strict=True):
            self._kept[(i, jj)] = out
        ran = dtype
        if isinstance(outs[0], np.ndarray) and outs[0].dtype.kind != dtype.kind:
            ran = self.w.components.digits[i].dtype  # thin products: the digits as they are
        return 2 * self.w.shape[0] * self.inner * self.x.shape[1] * len(columns), [ran.name]
