"""The product kernel: the one seam where component products are computed.

A kernel multiplies two arrays of small signed integers (the digits of one W component and
one X component) and returns their exact integer product as float64. The choice of
arithmetic is the kernel's; it is told a guaranteed upper bound on every partial sum so it
can pick one that is exact. Faster backends (int8 GEMM, GPU) implement the same two methods.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["ProductKernel", "NumpyKernel", "exact_dtype", "FLOAT32_EXACT", "FLOAT64_EXACT"]

# Integers up to these magnitudes are represented exactly, and so is every partial sum of a
# dot product that stays below them, in whatever order BLAS adds.
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
INT64_EXACT = 2**63

# Row blocks for reading one operand once against several others: about half an L2 cache.
_PANEL_BLOCK_BYTES = 1 << 22


def exact_dtype(max_partial_sum: int) -> np.dtype:
    """The cheapest dtype in which a dot product with this bound on |partial sums| is exact."""
    if max_partial_sum < FLOAT32_EXACT:
        return np.dtype(np.float32)
    if max_partial_sum < FLOAT64_EXACT:
        return np.dtype(np.float64)
    if max_partial_sum < INT64_EXACT:
        return np.dtype(np.int64)
    raise OverflowError(
        f"component products may reach {max_partial_sum}, beyond exact int64 arithmetic;"
        " use more, narrower components"
    )


class ProductKernel(Protocol):
    """What a product backend provides."""

    name: str

    def dtype_for(self, max_partial_sum: int, max_digit: int) -> np.dtype:
        """The operand dtype in which this kernel computes a product exactly.

        ``max_partial_sum`` bounds every |partial sum| of the dot products and
        ``max_digit`` every |digit| of either operand.
        """
        ...

    def prepare(self, digits: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Convert one component's digits to the operand form ``product`` expects."""
        ...

    def product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` for prepared operands of the same dtype; exact by construction."""
        ...

    def products(self, a: np.ndarray, bs: list[np.ndarray]) -> list[np.ndarray]:
        """``[a @ b for b in bs]``, reading ``a`` from memory once where it can."""
        ...


class NumpyKernel:
    """BLAS through numpy: float32 while partial sums stay below 2**24, else float64/int64."""

    name = "numpy"

    def dtype_for(self, max_partial_sum: int, max_digit: int) -> np.dtype:
        return exact_dtype(max_partial_sum)

    def prepare(self, digits: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return np.ascontiguousarray(digits, dtype=dtype)

    def product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.matmul(a, b)

    def products(self, a: np.ndarray, bs: list[np.ndarray]) -> list[np.ndarray]:
        # Row blocks of `a` small enough to stay in cache serve every b in turn, so a
        # memory-bound product reads `a` once. (One GEMM against the side-by-side bs would
        # too, but BLAS is much slower for a thin GEMM than for repeated GEMVs.)
        outs = [np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b)) for b in bs]
        rows = max(1, _PANEL_BLOCK_BYTES // max(1, a.shape[1] * a.itemsize))
        for start in range(0, a.shape[0], rows):
            block = a[start : start + rows]
            for b, out in zip(bs, outs, strict=True):
                np.matmul(block, b, out=out[start : start + rows])
        return outs
