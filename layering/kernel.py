"""Product kernels: the one seam where component products are computed.

A kernel multiplies two arrays of small signed integers (the digits of one W component and
one X component) exactly. The choice of arithmetic is the kernel's; it is told a guaranteed
upper bound on every partial sum so it can pick one that is exact:

``NumpyKernel``
    BLAS through numpy: float32 while partial sums stay below 2**24, else float64/int64.
``TorchKernel``
    ``torch._int_mm`` (int8 x int8 -> int32) while every |digit| <= 127 and every partial
    sum stays below 2**31, on a CUDA GPU or on a CPU with an int8 dot-product engine
    (AVX-512 VNNI, AMX); the numpy rule otherwise. On a GPU the operands, products,
    estimates and bounds stay on the device.

:func:`resolve_kernel` turns a name (``"auto"``, ``"numpy"``, ``"torch"``) and a device
into a kernel. ``"auto"`` picks the fastest engine that is exact on this machine: a CUDA
GPU, else torch on a CPU with VNNI or AMX, else numpy, and only an engine that passes an
exactness probe. torch is optional and imported only when a torch kernel is asked for.

Examples
--------
>>> kernel = resolve_kernel("numpy")
>>> kernel.dtype_for(max_partial_sum=1000, max_digit=15)
dtype('float32')
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .fused import thin_products
from .memory import output

__all__ = [
    "ProductKernel",
    "NumpyKernel",
    "TorchKernel",
    "KernelUnavailableError",
    "KERNEL_NAMES",
    "DEVICES",
    "resolve_kernel",
    "exact_dtype",
    "cpu_flags",
    "thread_count",
    "FLOAT32_EXACT",
    "FLOAT64_EXACT",
    "INT32_EXACT",
    "Rescale",
]

KERNEL_NAMES = ("auto", "numpy", "torch")
DEVICES = ("cpu", "cuda")

# Integers up to these magnitudes are represented exactly, and so is every partial sum of a
# dot product that stays below them, in whatever order BLAS adds.
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
INT64_EXACT = 2**63
# int8 x int8 products summed in int32: exact while every partial sum stays below this.
INT32_EXACT = 2**31
INT8_MAX_DIGIT = 127

# CPU flags (as /proc/cpuinfo spells them) of an int8 dot-product engine that makes
# torch's int8 GEMM faster than float BLAS; without one it is a slow reference path.
INT8_ENGINE_FLAGS = ("avx512_vnni", "amx_int8")

# Row blocks for reading one operand once against several others: about half an L2 cache.
_PANEL_BLOCK_BYTES = 1 << 22
# Row blocks of the float64 accumulation and bound arithmetic: large enough that numpy's
# per-call overhead, and the threads' wait for the GIL between calls, stay small against
# the work (temporaries of 2 MiB per thread, in L3). At 2048x2048 the four kinds of
# blocks took 41 ms in all with 2**15 elements, 34 ms with 2**17, 32 ms with 2**18 here.
_ROW_BLOCK_ELEMENTS = 1 << 18
# OpenBLAS runs a GEMM of fewer multiply-adds than this on the calling thread; a larger one
# starts its own threads, which inside the row blocks' threads oversubscribe the cores (and
# spin after the call), several times slower.
_BLAS_ONE_THREAD = 1 << 18

_TORCH_INSTALL = 'pip install -e ".[torch]"'

# Importing torch adds about 200 MiB to a process. "auto" imports it only where that is a
# small share of the memory the process may use (or torch is imported already).
TORCH_IMPORT_BYTES = 200 * 2**20
_TORCH_MEMORY_SHARE = 10


class KernelUnavailableError(ValueError):
    """A kernel or device was asked for that this machine cannot provide."""


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


@dataclass(frozen=True)
class Rescale:
    """Entry ``(a, b)`` of a resolution's term times ``2**(rows[a] + columns[b])``: the
    per-row and per-column offsets of scaled partitions (see :mod:`.scaling`).

    Attributes
    ----------
    rows : ndarray (M, 1) of int, or None
        Row exponents (None: 0).
    columns : ndarray (1, N) of int, or None
        Column exponents (None: 0).
    exact : bool
        Whether every ``2**e`` and every scaled value stays a normal float64, so plain
        products by the powers of two are exact; otherwise the term is scaled by
        ``ldexp`` (rounding what underflows once, an overflow giving inf).
    """

    rows: np.ndarray | None
    columns: np.ndarray | None
    exact: bool

    def row_scales(self, start: int, stop: int) -> np.ndarray | float:
        return 1.0 if self.rows is None else np.ldexp(1.0, self.rows[start:stop])

    def column_scales(self) -> np.ndarray | float:
        return 1.0 if self.columns is None else np.ldexp(1.0, self.columns)

    def exponents(self, start: int, stop: int) -> np.ndarray:
        rows = 0 if self.rows is None else self.rows[start:stop]
        return np.add(rows, 0 if self.columns is None else self.columns)


class ProductKernel(Protocol):
    """What a product backend provides.

    ``dtype_for``, ``prepare``, ``product`` and ``products`` compute exact digit-unit
    products; ``combine``, ``bound`` and ``to_host`` do the (float64) accumulation and
    bound arithmetic where the products live, so a device kernel keeps them there.
    """

    name: str
    device: str

    def dtype_for(self, max_partial_sum: int, max_digit: int) -> np.dtype:
        """The operand dtype in which this kernel computes a product exactly.

        ``max_partial_sum`` bounds every |partial sum| of the dot products and
        ``max_digit`` every |digit| of either operand.
        """
        ...

    def prepare(self, digits: np.ndarray, dtype: np.dtype) -> Any:
        """Convert one component's digits to the operand form ``product`` expects."""
        ...

    def product(self, a: Any, b: Any) -> Any:
        """``a @ b`` for prepared operands of the same dtype; exact by construction."""
        ...

    def products(self, a: Any, bs: list[Any]) -> list[Any]:
        """``[a @ b for b in bs]``, reading ``a`` from memory once where it can."""
        ...

    def combine(self, terms: list[tuple[int, list[tuple[int, Any]]]], previous: Any,
                rescale: Rescale | None = None) -> Any:
        """``previous + Σ 2**e (Σ sign * product)`` over ``terms = [(e, [(sign, product)])]``,
        the sum scaled entry by entry by ``rescale`` (if given) before ``previous`` is added.

        A new float64 array; ``previous`` (None for zeros) is not modified.
        """
        ...

    def bound(self, row_sum: np.ndarray, row_max: np.ndarray, col_sum: np.ndarray,
              col_max: np.ndarray, slack: float) -> Any:
        """``min(row_sum @ col_max, row_max @ col_sum) * slack``, elementwise."""
        ...

    def to_host(self, array: Any) -> np.ndarray:
        """``array`` as a numpy array."""
        ...


class NumpyKernel:
    """BLAS through numpy: float32 while partial sums stay below 2**24, else float64/int64."""

    name = "numpy"
    device = "cpu"

    def dtype_for(self, max_partial_sum: int, max_digit: int) -> np.dtype:
        return exact_dtype(max_partial_sum)

    def prepare(self, digits: np.ndarray, dtype: np.dtype) -> Any:
        if digits.dtype == dtype and digits.flags.c_contiguous:
            return digits
        out = np.empty(digits.shape, dtype=dtype)
        flat, source = out.reshape(-1), np.asarray(digits).reshape(-1)
        rows = _ROW_BLOCK_ELEMENTS

        def convert(start: int, stop: int) -> None:
            flat[start * rows : stop * rows] = source[start * rows : stop * rows]

        over_row_blocks(-(-flat.size // rows), 1, convert)
        return out

    def product(self, a: Any, b: Any) -> Any:
        if np.ndim(a) == 2 and np.ndim(b) == 2:
            return np.matmul(a, b, out=output((a.shape[0], b.shape[1]), np.result_type(a, b)))
        return np.matmul(a, b)

    def products(self, a: Any, bs: list[Any]) -> list[Any]:
        # Row blocks of `a` small enough to stay in cache serve every b in turn, so a
        # memory-bound product reads `a` once. (One GEMM against the side-by-side bs would
        # too, but BLAS is much slower for a thin GEMM than for repeated GEMVs.)
        outs = [output((a.shape[0], b.shape[1]), np.result_type(a, b)) for b in bs]
        rows = max(1, _PANEL_BLOCK_BYTES // max(1, a.shape[1] * a.itemsize))
        for start in range(0, a.shape[0], rows):
            block = a[start : start + rows]
            for b, out in zip(bs, outs, strict=True):
                np.matmul(block, b, out=out[start : start + rows])
        return outs

    def streamed_products(self, digits: np.ndarray, dtype: np.dtype, bs: list[Any]
                          ) -> list[Any] | None:
        """``[prepare(digits) @ b for b in bs]`` for thin ``bs``, converting ``digits`` row
        block by row block in cache, so memory sees only the narrow digits once.

        Where numba is installed, a few columns in all take the digits as they are, with
        int32 sums (:func:`.fused.thin_products`): float32 holds every partial sum exactly
        below 2**24, int32 below 2**31.

        None where this kernel has nothing better than ``products`` on prepared digits.
        """
        if dtype == np.float32:
            thin = thin_products(digits, bs, 2**24)
            if thin is not None:
                return thin
        if digits.dtype.itemsize >= dtype.itemsize or dtype.kind != "f":
            return None
        m, k = digits.shape
        outs = [output((m, b.shape[1]), dtype) for b in bs]
        rows = max(1, _PANEL_BLOCK_BYTES // 4 // max(1, k * dtype.itemsize))

        def block(start: int, stop: int) -> None:
            wide = scratch("streamed", (stop - start) * k, dtype).reshape(stop - start, k)
            wide[...] = digits[start:stop]
            for b, out in zip(bs, outs, strict=True):
                np.matmul(wide, b, out=out[start:stop])

        over_row_blocks(m, rows, block)
        return outs

    def combine(self, terms: list[tuple[int, list[tuple[int, Any]]]], previous: Any,
                rescale: Rescale | None = None) -> Any:
        # Row blocks, on every core: products are converted while they are added and the
        # power-of-two scales are exact, so memory sees each input read once and the
        # result written once, with no full-size temporaries. Per-row scales join the
        # scale each product is multiplied by anyway; per-column ones are one product of
        # the block while it is in cache.
        shape = np.shape(terms[0][1][0][1])
        out = output(shape, np.float64)
        prev = None if previous is None else np.asarray(previous)
        fused = rescale is not None and rescale.exact
        columns = rescale.column_scales() if fused and rescale is not None else 1.0

        def block(start: int, stop: int) -> None:
            rows = out[start:stop]
            by_row = rescale.row_scales(start, stop) if fused and rescale is not None else 1.0
            for k, (exponent, signed) in enumerate(terms):
                target = rows if k == 0 else scratch("combine", rows.size, np.float64
                                                      ).reshape(rows.shape)
                _scaled_sum(signed, by_row * math.ldexp(1.0, exponent), start, stop, target)
                if k:
                    np.add(rows, target, out=rows)
            if fused and not isinstance(columns, float):
                np.multiply(rows, columns, out=rows)
            elif rescale is not None and not fused:
                with np.errstate(over="ignore"):  # inf: the caller names the overflow
                    np.ldexp(rows, rescale.exponents(start, stop), out=rows)
            if prev is not None:
                np.add(rows, prev[start:stop], out=rows)

        over_row_blocks(shape[0], _rows_per_block(shape), block)
        return out

    def bound(self, row_sum: np.ndarray, row_max: np.ndarray, col_sum: np.ndarray,
              col_max: np.ndarray, slack: float) -> Any:
        # Row blocks, on every core: the two outer products of a block stay in cache,
        # only the result is written to memory. One remaining pair is a plain outer
        # product (the same single rounding as a GEMM of inner size one, without BLAS's
        # overhead for it).
        m, (pairs, n) = row_sum.shape[0], col_sum.shape
        out = output((m, n), np.float64)
        col_max, col_sum = col_max * slack, col_sum * slack
        outer = np.multiply if pairs == 1 else np.matmul
        rows = _rows_per_block((m, n))
        if pairs > 1:  # a GEMM small enough that BLAS runs it on this thread
            rows = max(1, min(rows, _BLAS_ONE_THREAD // max(1, n * pairs)))

        def block(start: int, stop: int) -> None:
            rows = out[start:stop]
            other = scratch("bound", rows.size, np.float64).reshape(rows.shape)
            outer(row_sum[start:stop], col_max, out=rows)
            outer(row_max[start:stop], col_sum, out=other)
            np.minimum(rows, other, out=rows)

        over_row_blocks(m, rows, block)
        return out

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)


def _scaled_sum(signed: list[tuple[int, Any]], scale: float | np.ndarray, start: int,
                stop: int, out: np.ndarray) -> None:
    """``out = scale * Σ sign * product[start:stop]`` in float64.

    The sum is exact: products of integer dtypes (int32 sums of int8 products, int64) are
    added in their own dtype, where the step's sum is exact (it is bounded like each
    product; int32 wraps around exactly), and converted once; float products are exact in
    float64. ``scale`` is a power of two, or a column of them (one per row).

    Conversions are plain copies and the scale a product in float64: numpy's mixed-dtype
    arithmetic goes through buffered casts, several times slower.
    """
    (sign, first), rest = signed[0], signed[1:]
    dtype = np.asarray(first).dtype
    if rest and dtype.kind == "i" and all(np.asarray(p).dtype == dtype for _, p in rest):
        part = first[start:stop]
        whole = scratch("scaled-sum", part.size, dtype).reshape(part.shape)
        np.multiply(part, sign, out=whole)
        for sign, product in rest:
            (np.add if sign > 0 else np.subtract)(whole, product[start:stop], out=whole)
        out[...] = whole
        _scale(out, scale)
        return
    out[...] = first[start:stop]
    if not rest:
        _scale(out, scale if sign > 0 else -scale)
        return
    if sign < 0:
        np.negative(out, out=out)
    wide = scratch("scaled-sum-wide", out.size, np.float64).reshape(out.shape)
    for sign, product in rest:
        wide[...] = product[start:stop]
        (np.add if sign > 0 else np.subtract)(out, wide, out=out)
    _scale(out, scale)


def _scale(out: np.ndarray, scale: float | np.ndarray) -> None:
    if not (isinstance(scale, float) and scale == 1.0):
        np.multiply(out, scale, out=out)


def _rows_per_block(shape: tuple[int, ...]) -> int:
    return max(1, _ROW_BLOCK_ELEMENTS // max(1, int(np.prod(shape[1:]))))


_pool: tuple[int, ThreadPoolExecutor] | None = None
_scratch = threading.local()


def scratch(tag: str, size: int, dtype: np.dtype | type) -> np.ndarray:
    """A buffer of ``size`` elements for this thread, reused by every call with ``tag``.

    For block-sized temporaries of loops over row blocks: freshly allocated pages cost
    more than the work done in them. The contents are undefined.
    """
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (tag, np.dtype(dtype))
    if key not in buffers or buffers[key].size < size:
        buffers[key] = np.empty(size, dtype=dtype)
    return buffers[key][:size]


def thread_count() -> int:
    """Threads the library may run its row blocks on: the cores this process may use, and
    no more than ``OMP_NUM_THREADS`` where that is set (Dask sets it to 1 in a worker
    process, whose own threads are the cluster's parallelism: a second pool there would
    only make its blocks contend for the cores).

    >>> thread_count() >= 1
    True
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else cores


def over_row_blocks(m: int, rows: int, block: Callable[[int, int], None]) -> None:
    """``block(start, stop)`` for row blocks of ``rows`` rows covering ``range(m)``.

    The blocks run on a thread per core (numpy releases the GIL in its loops) when there
    are several (:func:`thread_count`); ``block`` must write only its own rows.
    """
    global _pool
    starts = range(0, m, rows)
    workers = thread_count()
    if workers == 1 or len(starts) < 2 * workers:
        for start in starts:
            block(start, min(start + rows, m))
        return
    if _pool is None or _pool[0] != os.getpid():  # threads do not survive a fork
        _pool = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="layering"))
    # a few runs of consecutive blocks per thread: little overhead, and a thread slowed
    # by other load leaves its share to the others
    runs = min(len(starts), 4 * workers)
    bounds = [starts[len(starts) * r // runs] for r in range(runs)] + [m]

    def run(r: int) -> None:
        for start in range(bounds[r], bounds[r + 1], rows):
            block(start, min(start + rows, bounds[r + 1]))

    for _ in _pool[1].map(run, range(runs)):
        pass


# ---------------------------------------------------------------------------- torch
def _import_torch(purpose: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise KernelUnavailableError(
            f"{purpose} needs torch, which is not installed; install it with {_TORCH_INSTALL}"
            " (or use kernel='numpy')"
        ) from exc
    return torch


@dataclass
class _DeviceOperand:
    """Digits on a CUDA device, zero-padded to cuBLASLt's int8 shape rules."""

    tensor: Any
    rows: int
    cols: int
    _right: Any = None

    def as_right(self, inner: int) -> Any:
        """The first ``inner`` rows, column-major (the layout int8 GEMMs are fastest
        with), made on first use as a right operand and kept."""
        if self._right is None or self._right.shape[0] != inner:
            self._right = self.tensor[:inner].t().contiguous().t()
        return self._right


class TorchKernel(NumpyKernel):
    """``torch._int_mm``: int8 digits, int32 sums, on a CUDA GPU or a CPU.

    Products whose digits exceed 127 in magnitude or whose partial sums may reach 2**31
    use the numpy rule (float32/float64; on a GPU, float64 on the device), so every
    product is exact.

    Parameters
    ----------
    device : {"cpu", "cuda"}

    Raises
    ------
    KernelUnavailableError
        If torch is not installed, or ``device="cuda"`` and no CUDA GPU is visible.
    """

    def __init__(self, device: str = "cpu") -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; use one of {DEVICES}")
        self.torch = _import_torch(f"kernel='torch' on device={device!r}")
        if device == "cuda" and not self.torch.cuda.is_available():
            raise KernelUnavailableError(
                "device='cuda' needs a CUDA GPU, but none is visible to torch"
                f" (torch {self.torch.__version__}, CUDA build: {self.torch.version.cuda});"
                " use device='cpu'"
            )
        self.device = device
        self.name = f"torch-{device}"
        #: Whether operands, products, estimates and bounds live on the device as torch
        #: tensors (a GPU) rather than in host memory as numpy arrays (a CPU).
        self.resident = device == "cuda"

    def dtype_for(self, max_partial_sum: int, max_digit: int) -> np.dtype:
        if max_digit <= INT8_MAX_DIGIT and max_partial_sum < INT32_EXACT:
            return np.dtype(np.int8)
        dtype = exact_dtype(max_partial_sum)
        if self.resident and dtype == np.float32:
            # float32 GEMMs on a GPU may round through TF32; float64 never does.
            return np.dtype(np.float64)
        return dtype

    def prepare(self, digits: np.ndarray, dtype: np.dtype) -> Any:
        host = super().prepare(digits, dtype)
        if not self.resident:
            return host
        if dtype != np.int8:
            if dtype == np.int64:
                return host  # no int64 GEMM on the GPU: done on the host, then moved
            return self.torch.from_numpy(host).to(self.device)
        rows, cols = host.shape
        # cuBLASLt: the left operand needs more than 16 rows, the inner size and the right
        # operand's columns multiples of 8. Zero rows and columns add nothing.
        padded = np.zeros((max(24, _round8(rows)), _round8(cols)), dtype=np.int8)
        padded[:rows, :cols] = host
        return _DeviceOperand(self.torch.from_numpy(padded).to(self.device), rows, cols)

    def product(self, a: Any, b: Any) -> Any:
        torch = self.torch
        if isinstance(a, _DeviceOperand):
            out = torch._int_mm(a.tensor, b.as_right(a.tensor.shape[1]))
            return out[: a.rows, : b.cols]
        if isinstance(a, np.ndarray) and a.dtype == np.int8:
            # numpy's memory, not torch's: reused pages (memory.output), and where fresh
            # ones are needed numpy's are advised onto huge pages, torch's are not
            out = output((a.shape[0], b.shape[1]), np.int32)
            torch._int_mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
            return out
        if self.resident and isinstance(a, np.ndarray):
            return torch.from_numpy(np.matmul(a, b)).to(self.device)
        return a @ b

    def products(self, a: Any, bs: list[Any]) -> list[Any]:
        if isinstance(a, np.ndarray) and a.dtype != np.int8:
            return super().products(a, bs)
        return [self.product(a, b) for b in bs]

    def streamed_products(self, digits: np.ndarray, dtype: np.dtype, bs: list[Any]
                          ) -> list[Any] | None:
        return super().streamed_products(digits, dtype, bs) if not self.resident else None

    def combine(self, terms: list[tuple[int, list[tuple[int, Any]]]], previous: Any,
                rescale: Rescale | None = None) -> Any:
        if not self.resident:
            return super().combine(terms, previous, rescale)
        torch = self.torch
        out = None
        for exponent, signed in terms:
            part = sum(sign * p.to(torch.float64) for sign, p in signed)
            part = part * math.ldexp(1.0, exponent)
            out = part if out is None else out + part
        assert out is not None  # (at least one term)
        if rescale is not None and rescale.exact:
            for scales in (rescale.row_scales(0, out.shape[0]), rescale.column_scales()):
                if not isinstance(scales, float):
                    out = out * self._on_device(scales)
        elif rescale is not None:
            exponents = self._on_device(rescale.exponents(0, out.shape[0]).astype(np.float64))
            out = torch.ldexp(out, exponents)
        return out if previous is None else out + self._on_device(previous)

    def bound(self, row_sum: np.ndarray, row_max: np.ndarray, col_sum: np.ndarray,
              col_max: np.ndarray, slack: float) -> Any:
        if not self.resident:
            return super().bound(row_sum, row_max, col_sum, col_max, slack)
        rs, rm, cs, cm = (self._on_device(v) for v in (row_sum, row_max, col_sum, col_max))
        return self.torch.minimum(rs @ (cm * slack), rm @ (cs * slack))

    def to_host(self, array: Any) -> np.ndarray:
        if isinstance(array, np.ndarray):
            return array
        return array.cpu().numpy()

    def _on_device(self, array: Any) -> Any:
        if isinstance(array, self.torch.Tensor):
            return array
        host = np.ascontiguousarray(array, dtype=np.float64)
        return self.torch.from_numpy(host).to(self.device)


def _round8(n: int) -> int:
    return -(-n // 8) * 8


# ---------------------------------------------------------------------------- choosing
@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, as Linux's /proc/cpuinfo lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _torch_or_none(memory_limit: int | None = None) -> Any:
    """torch, or None if it is not installed or importing it would not fit the memory."""
    if (memory_limit is not None and "torch" not in sys.modules
            and memory_limit < _TORCH_MEMORY_SHARE * TORCH_IMPORT_BYTES):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cuda_visible(torch: Any) -> bool:
    return torch is not None and bool(torch.cuda.is_available())


@functools.cache
def _probe_passes(device: str) -> bool:
    """Does the torch kernel on ``device`` give exact int8 products, extremes included?

    Cached per process. Compares against int64 numpy on random digits and on the
    extreme patterns (all +-127) that would overflow a saturating 16-bit intermediate.
    """
    try:
        kernel = TorchKernel(device)
        rng = np.random.default_rng(0)
        m, k, n = 33, 4104, 24
        a = rng.integers(-127, 128, (m, k), dtype=np.int8)
        b = rng.integers(-127, 128, (k, n), dtype=np.int8)
        a[:8], b[:, :8] = 127, -127
        a[8:16], b[:, 8:16] = -127, -127
        int8 = np.dtype(np.int8)
        got = kernel.to_host(kernel.product(kernel.prepare(a, int8), kernel.prepare(b, int8)))
        return bool(np.array_equal(np.asarray(got, dtype=np.int64),
                                   a.astype(np.int64) @ b.astype(np.int64)))
    except Exception:  # a kernel that fails to run is as unusable as an inexact one
        return False


def _auto(device: str | None, memory_limit: int | None) -> ProductKernel:
    """The fastest kernel that is exact here, on ``device`` (None: any)."""
    torch = _torch_or_none(memory_limit)
    if device == "cuda":
        kernel = TorchKernel("cuda")  # raises, naming what is missing
        if not _probe_passes("cuda"):
            raise KernelUnavailableError("the CUDA int8 kernel failed its exactness probe")
        return kernel
    if device is None and _cuda_visible(torch) and _probe_passes("cuda"):
        return TorchKernel("cuda")
    if (torch is not None and any(f in cpu_flags() for f in INT8_ENGINE_FLAGS)
            and _probe_passes("cpu")):
        return TorchKernel("cpu")
    return NumpyKernel()


def resolve_kernel(kernel: str | ProductKernel = "auto", device: str | None = None,
                   *, memory_limit: int | None = None) -> ProductKernel:
    """The product kernel for a name and device.

    Parameters
    ----------
    kernel : {"auto", "numpy", "torch"} or ProductKernel
        ``"auto"`` picks the fastest engine that is exact on this machine: torch int8 on a
        CUDA GPU, else on a CPU with AVX-512 VNNI or AMX (where torch is installed and its
        exactness probe passes), else numpy. An instance is returned as it is.
    device : {"cpu", "cuda"}, optional
        Where products run; None lets ``"auto"`` choose (``"torch"`` then uses a GPU if
        one is visible).
    memory_limit : int, optional
        Bytes this process may use (a Dask worker's limit, say). ``"auto"`` then imports
        torch only if that takes a small share of it (:data:`TORCH_IMPORT_BYTES`, about
        200 MiB, at most a tenth), unless torch is imported already.

    Raises
    ------
    ValueError
        On an unknown kernel name or device.
    KernelUnavailableError
        If the kernel or device asked for is not available here (torch not installed, no
        CUDA GPU visible), saying what is missing and how to install it.

    Examples
    --------
    >>> resolve_kernel("numpy").name
    'numpy'
    """
    if device is not None and device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {DEVICES}")
    if not isinstance(kernel, str):
        if device is not None and getattr(kernel, "device", device) != device:
            raise ValueError(f"kernel {kernel.name!r} runs on {kernel.device!r}, not {device!r}")
        return kernel
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {kernel!r}; use one of {KERNEL_NAMES}")
    if kernel == "numpy":
        if device == "cuda":
            raise ValueError("kernel='numpy' runs on the CPU; use kernel='torch' or 'auto'"
                             " with device='cuda'")
        return NumpyKernel()
    if kernel == "torch":
        if device is None:
            device = "cuda" if _cuda_visible(_torch_or_none()) else "cpu"
        return TorchKernel(device)
    return _auto(device, memory_limit)
