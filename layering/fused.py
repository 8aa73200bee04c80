"""The operand split as one compiled pass, and thin products on the digits as they are
(numba, where it is installed).

:meth:`Partition.components` splits an array with about a dozen numpy passes over each
cache-sized block: the range check, the truncation to the finest grid, the on-grid check,
and per component a shift, a subtraction and a conversion. Each pass is fast, but together
they cost several times one read of the operand: a cold 8192x8192 float64 split took
84 ms here against 18 ms for the GEMV that reads it once. Compiled, the same arithmetic is
one pass that reads every value once and writes its digits (about 30 ms).

numba is optional: without it (or for what this pass does not cover) the numpy passes
run, and they give the same digits bit for bit. Importing numba costs about 0.2 s, and
compiling a variant a few seconds the first time on a machine (the result is cached on
disk), so the pass is used only for arrays large enough to repay that, or once numba is
loaded anyway. ``LAYERED_NUMBA=0`` turns it off.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["FusedSplit", "describe", "fused_split", "fused_split_usable", "thin_products"]

# Below this many values numpy's passes cost less than loading numba would.
_MIN_VALUES = 1 << 24
# From this size up, numba is loaded in the background for the splits that follow.
_PRELOAD_VALUES = 1 << 22
# Once numba is loaded, arrays from this size up are worth a compiled pass.
_MIN_VALUES_LOADED = 1 << 16
# Thin products: at most this many columns of the right operands together (beyond, BLAS).
_THIN_COLUMNS = 8
# Values per parallel block at least (fewer, larger blocks cost less to hand out).
_CHUNK = 1 << 16

# (max |a|, values out of range, off the grid, smallest T_m)
FusedSplit = tuple[float, int, bool, int]

_kernels: ModuleType | None = None  # layering._fused_kernels, once loaded
_unavailable = False
# numba's fallback threading layer (where neither OpenMP nor TBB is found) aborts the
# process when two threads launch parallel work at once: one launch at a time.
_launch = threading.Lock()
_launched_in: int | None = None
_loading_lock = threading.Lock()
_loading = threading.Thread()  # the background load, once started (see _worth)


def fused_split_usable(values: np.ndarray, digit_dtypes: Sequence[np.dtype],
                       points: Sequence[int], *, row_stats: bool = False,
                       force: bool = False) -> bool:
    """Can (and should) :func:`fused_split` split ``values`` under ``points``?

    It covers float32 and float64 values, digits of one integer dtype, and spans of up
    to 62 bits; ``force`` skips the size rule (tests use it on small arrays).
    """
    if values.dtype not in (np.float32, np.float64) or values.size == 0:
        return False
    if points[0] - points[-1] > 62 or len(set(digit_dtypes)) != 1:
        return False
    m, dtype = len(points) - 1, np.dtype(digit_dtypes[0])

    def warm() -> None:  # the variant this split needs, on tiny arrays
        stats = np.empty((m, 2, 1), np.int64) if row_stats else None
        fused_split(np.zeros(2, values.dtype), np.empty((m, 2), dtype), points,
                    math.ldexp(1.0, points[0]), stats, 2, 1)

    return _worth(values.size, force, warm)


def _worth(size: int, force: bool, warm: Callable[[], object] | None = None) -> bool:
    """Is numba wanted (``LAYERED_NUMBA``), installed, and worth loading for ``size``
    values (or loaded already)?

    Between ``_PRELOAD_VALUES`` and ``_MIN_VALUES`` the answer is no for now, but numba
    is loaded on a background thread, and ``warm`` (a call on tiny arrays of the same
    kinds) loads the compiled variant this caller needs: a process that splits such
    arrays again, as repeated inference does, gets the compiled pass from then on
    without any call waiting for the load.
    """
    if _unavailable or os.environ.get("LAYERED_NUMBA", "1") == "0":
        return False
    if _launched_in not in (None, os.getpid()):
        return False  # a fork of a process that ran parallel work (see _launch_with)
    if force:
        return _load() is not None
    if _loading.is_alive():  # no call waits for the background load
        return size >= _MIN_VALUES and _load() is not None
    cheap = _kernels is not None or "numba" in sys.modules
    if size >= (_MIN_VALUES_LOADED if cheap else _MIN_VALUES):
        return _load() is not None
    if size >= _PRELOAD_VALUES and _kernels is None and _threads() > 1:
        # (not in a process held to one thread, such as a Dask worker: it shares the
        # cores with its neighbours, whom loading numba would take 0.5 s of CPU from)
        _preload(warm)
    return False


def _threads() -> int:
    from .kernel import thread_count

    return thread_count()


def _preload(warm: Callable[[], object] | None) -> None:
    global _loading

    def load() -> None:
        if _load() is not None and warm is not None:
            warm()

    _loading = threading.Thread(target=load, name="layering-numba-load", daemon=True)
    _loading.start()


def describe() -> str:
    """Which split runs here, for benchmark headers."""
    if os.environ.get("LAYERED_NUMBA", "1") == "0":
        return "numpy passes (LAYERED_NUMBA=0)"
    from importlib import metadata

    try:  # (without importing it: that would change the size rule)
        version = metadata.version("numba")
    except metadata.PackageNotFoundError:
        return "numpy passes (numba not installed)"
    return (f"one compiled pass (numba {version}) from {_MIN_VALUES:,} values, or"
            f" {_MIN_VALUES_LOADED:,} once numba is loaded; numpy passes below")


def fused_split(flat: np.ndarray, digits: np.ndarray, points: Sequence[int], limit: float,
                stats: np.ndarray | None, columns: int, threads: int) -> FusedSplit:
    """Write the digits of ``flat`` (1-D, contiguous) under the partition ``points`` into
    ``digits`` (one row per component).

    The arithmetic is that of the numpy passes: ``T_m = trunc(a * 2**-p_m)``, every other
    ``T_k`` is ``T_m`` shifted right in integers rounding toward zero, and digit ``i`` is
    ``T_{i+1} - (T_i << w_i)``. With ``stats``, also writes ``[sum, max]`` of each row's
    ``|digits[i]|`` (rows of ``columns`` values) into ``stats[i]`` (shape ``(m, 2, rows)``).

    Returns ``(max |a|, how many values were out of range or NaN, off the grid, the
    smallest T_m)``; when values are out of range the digits are meaningless and the
    caller raises.
    """
    kernels = _load()
    assert kernels is not None
    shifts = tuple(p - points[-1] for p in points[1:])
    widths = tuple(points[i] - points[i + 1] for i in range(len(points) - 1))
    scale = float(np.ldexp(1.0, -points[-1]))
    # the magnitudes' bit patterns: integers of the values' width, sign bit masked off
    width = np.int64 if flat.dtype == np.float64 else np.int32
    bits, mask = flat.view(width), np.iinfo(width).max
    if stats is not None:
        rows = flat.size // columns
        blocks = max(1, min(rows, 8 * threads))
        top, bad, off, low = _launch_with(threads, kernels.row_split, flat, bits, mask,
                                          digits, stats, shifts, widths, limit, scale,
                                          columns, blocks)
    else:
        blocks = max(1, min(-(-flat.size // _CHUNK), 8 * threads))
        top, bad, off, low = _launch_with(threads, kernels.flat_split, flat, bits, mask,
                                          digits, shifts, widths, limit, scale, blocks)
    abs_max = float(np.array(top, dtype=bits.dtype).view(flat.dtype))
    return abs_max, int(bad), bool(off), int(low)


def thin_products(digits: np.ndarray, rights: Sequence[np.ndarray], exact_below: int,
                  *, force: bool = False) -> list[np.ndarray] | None:
    """``[digits @ b for b in rights]`` in int32, for a few thin ``rights`` holding
    integer values (as the numpy kernel prepares them), reading ``digits`` once.

    A BLAS product needs the small-integer digits converted to floats first, which costs
    several times the product itself when the right operand is thin (a GEMV): 8192x8192
    int8 digits against one column took 14-16 ms converted, 4.3 ms here. ``exact_below``
    bounds every partial sum (the caller's exactness rule); int32 holds it up to 2**31.
    None where this does not apply (then the caller converts).
    """
    columns = sum(int(b.shape[1]) for b in rights)
    if (digits.ndim != 2 or digits.dtype not in (np.int8, np.int16) or exact_below > 2**31
            or columns > _THIN_COLUMNS or not digits.flags.c_contiguous):
        return None
    if not _worth(digits.size, force) or _kernels is None:
        return None
    from .memory import output

    side = np.concatenate([np.asarray(b).T for b in rights]).astype(np.int32)
    out = output((digits.shape[0], columns), np.int32)
    threads = _threads()
    _launch_with(threads, _kernels.int_products, digits, side, out,
                 max(1, min(digits.shape[0], 8 * threads)))
    outs, first = [], 0
    for b in rights:
        outs.append(out[:, first : first + b.shape[1]])
        first += b.shape[1]
    return outs


def _launch_with(threads: int, kernel: Callable[..., Any], *args: Any) -> Any:
    """``kernel(*args)`` on ``threads`` threads, its blocks handed out one at a time.

    GNU OpenMP, numba's usual threading layer, hangs in a forked child of a process that
    used it: such a child takes the numpy passes instead (the pid is remembered here).
    """
    global _launched_in
    import numba

    _launched_in = os.getpid()

    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    with _launch:
        numba.set_num_threads(max(1, min(threads, most)))
        # blocks handed out one at a time, not split evenly up front: a core that
        # something else holds (BLAS's threads spin a while after a call) then takes
        # fewer of them instead of making every other thread wait for its half
        chunksize = numba.set_parallel_chunksize(1)
        try:
            return kernel(*args)
        finally:
            numba.set_parallel_chunksize(chunksize)


def _load() -> ModuleType | None:
    global _kernels, _unavailable
    with _loading_lock:
        if _kernels is None and not _unavailable:
            try:
                _kernels = _compile()
            except ImportError:
                _unavailable = True
    return _kernels


def _compile() -> ModuleType:
    from . import _fused_kernels

    _start_threads()
    return _fused_kernels


def _start_threads() -> None:
    """Start numba's threads, waiting passively between launches.

    By default GNU OpenMP's threads spin for a while after each parallel launch, and
    BLAS's threads after each call: on a machine with few cores each then runs at the
    other's expense. Measured here on 10,000 MNIST inputs, the compiled split took
    12.8 ms and the GEMM right after it 18.6 ms while both spun, against 3.9 ms and
    9.4 ms with numba's threads waiting passively (the numpy split: 6.8 ms). OpenMP reads
    ``OMP_WAIT_POLICY`` once, as numba's thread pool loads it, so it is set for that
    moment only (unless the user set it), not for anything else in the process.
    """
    from numba.np.ufunc import parallel

    if "OMP_WAIT_POLICY" in os.environ:
        parallel._launch_threads()
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        parallel._launch_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]
