"""How a process gets its memory: large result arrays whose pages are reused once nobody
holds them, and (for Dask workers) glibc's and numpy's page policies.

A resolution writes fresh full-size arrays: its products, its estimate and its bound.
Fresh pages are expensive here. Every page is zeroed by the kernel on first touch, and
numpy advises huge pages for large arrays, which the kernel may first have to make by
compacting memory. Writing a new 8192x1024 float64 array took 8 ms with huge pages at
hand, 30 ms in plain pages, and up to 110 ms while the kernel compacted; that alone made
the first resolution of 8192x8192x1024 take 1.04x to 1.35x of its GEMM from run to run.

:func:`output` hands out arrays whose memory comes from earlier results that nothing
references any more: the caller gets a view of a kept buffer, so the buffer is free again
exactly when that view (and every view of it) is gone. At most ``_IDLE_BYTES`` of free
buffers are kept; small arrays come from numpy as usual.

:func:`keep_freed_memory` has glibc keep the memory a process frees for its next arrays,
instead of handing it back to the system at once (as a Dask worker is told to): a 512-row
block of 2048 x 2048 x 512 took about 1300 page faults a resolution, the last resolution
4.5 ms of CPU instead of 2.

:func:`plain_pages` turns numpy's huge-page advice off for the process, for processes that
allocate many mid-sized arrays they keep (a Dask worker's row blocks and their kernel
conversions). Here a fresh 8 MiB array took 15 ms to fill under the advice and 3.4 ms
without it, and the split of a 512 x 4096 row block 52 ms against 18 ms; products were
unchanged (within 2%). The huge pages the advice asks for were most often pages the
virtual machine had handed back to its host, which the host must supply again at the
first touch; plain pages come from the free pages the process's machine holds at hand.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["output", "plain_pages", "keep_freed_memory"]

# Arrays below this size gain little: their pages are few.
_MIN_BYTES = 1 << 22
# Free buffers kept for reuse, in bytes at most (oldest dropped first).
_IDLE_BYTES = 1 << 28

_buffers: OrderedDict[int, np.ndarray] = OrderedDict()
_lock = threading.Lock()
_counter = 0


def _references(buffer: np.ndarray) -> int:
    return sys.getrefcount(buffer)


# What _references reports for a buffer referenced only by _buffers: measured, not
# assumed, since how the interpreter counts its own temporary references varies.
_probe: OrderedDict[int, np.ndarray] = OrderedDict({0: np.empty(1)})
_FREE = _references(_probe[0])
del _probe


def output(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``.

    Large ones reuse the pages of an earlier result of the same size that is no longer
    referenced; the contents are undefined either way.
    """
    global _counter
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < _MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    with _lock:
        for key in _buffers:  # (a loop variable holding a buffer would count as a user)
            if _buffers[key].nbytes == nbytes and _references(_buffers[key]) == _FREE:
                _buffers.move_to_end(key)
                return _buffers[key].view(dtype).reshape(shape)
        buffer = np.empty(nbytes, dtype=np.uint8)
        _counter += 1
        _buffers[_counter] = buffer
        _trim()
        return buffer.view(dtype).reshape(shape)


def _trim() -> None:
    """Drop the oldest free buffers while the free ones exceed ``_IDLE_BYTES``."""
    free = [key for key in _buffers if _references(_buffers[key]) == _FREE]
    idle = sum(_buffers[key].nbytes for key in free)
    for key in free:
        if idle <= _IDLE_BYTES:
            break
        idle -= _buffers.pop(key).nbytes


def plain_pages() -> bool:
    """Allocate numpy arrays without the huge-page advice from now on in this process,
    unless ``NUMPY_MADVISE_HUGEPAGE`` says otherwise (numpy's own switch, read only as
    numpy is imported); whether the advice is off now."""
    import os

    if os.environ.get("NUMPY_MADVISE_HUGEPAGE", "").strip() not in ("", "0"):
        return False
    import importlib

    switch = getattr(importlib.import_module("numpy._core.multiarray"),
                     "_set_madvise_hugepage", None)
    if switch is None:  # a numpy without it: its default stays
        return False
    switch(False)
    return True


#: glibc's mallopt parameters: arrays up to this size come from the heap (its maximum for
#: a thread's arena), and free memory up to this size stays at the heap's top.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_ARRAYS, _KEPT_FREE = 32 << 20, 512 << 20


def keep_freed_memory(memory_limit: int | None = None) -> bool:
    """Have glibc serve arrays up to 32 MiB from the heap and keep up to 512 MiB (an eighth
    of ``memory_limit`` at most) of freed memory for later ones, rather than return it to
    the system each time; whether it did (False where the C library is not glibc).

    Fresh pages cost a page fault each: a process that frees and makes arrays of the same
    sizes block after block pays them again every time otherwise.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    keep = _KEPT_FREE if not memory_limit else min(_KEPT_FREE, memory_limit // 8)
    arrays = min(_HEAP_ARRAYS, keep)
    return bool(mallopt(_M_MMAP_THRESHOLD, arrays)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))
