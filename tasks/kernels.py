"""The product kernel a Dask worker uses, resolved once per worker process.

Runs name their kernel and device as plain strings (``"auto"``, ``"numpy"``, ``"torch"``;
``"cpu"``, ``"cuda"``) so that every worker resolves them for itself: a worker with a GPU
uses it under ``"auto"``, one without falls back to the fastest exact engine it has.
No Prefect here: workers import this without it.
"""

from __future__ import annotations

import contextlib
import functools

from distributed import get_worker

from layered.layering import ProductKernel, resolve_kernel

__all__ = ["worker_kernel", "warm_kernel"]


def worker_kernel(kernel: str, device: str | None) -> ProductKernel:
    """The kernel named ``kernel`` on ``device``, within this worker's memory limit.

    ``"auto"`` does not import torch (about 200 MiB) into a worker that has little memory
    (see :func:`layered.layering.resolve_kernel`). Outside a worker (blocks run in the
    flow's process) there is no limit.
    """
    try:
        memory_limit = get_worker().memory_manager.memory_limit or None
    except ValueError:  # not in a worker
        memory_limit = None
    return _kernel(kernel, device, memory_limit)


@functools.lru_cache(maxsize=4)
def _kernel(kernel: str, device: str | None, memory_limit: int | None) -> ProductKernel:
    return resolve_kernel(kernel, device, memory_limit=memory_limit)


def warm_kernel(memory_limit: int | None) -> None:
    """Resolve the default kernel (``"auto"``) of a process with ``memory_limit`` bytes now,
    ahead of its first block: where that is torch, importing and probing it takes about
    1.5 s (see :mod:`layered.tasks.kernel_warm_up`)."""
    with contextlib.suppress(Exception):  # the first block resolving it reports the error
        _kernel("auto", None, memory_limit)
