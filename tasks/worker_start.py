"""Worker preload of every layered cluster the command line starts: how the worker
allocates memory.

A worker process allocates per-block arrays it keeps (a row block's digits and their
kernel conversions, a chunk's activations) and fills them once: fresh pages, which are
cheaper without numpy's huge-page advice (see :func:`layered.layering.memory.plain_pages`).
It also makes and frees arrays of the same sizes block after block: glibc keeps what it
frees for the next ones (:func:`layered.layering.memory.keep_freed_memory`, within an
eighth of the worker's memory limit), where Dask has it returned to the system at once.
A worker of a cluster started by hand gets the same with
``dask worker --preload layered.tasks.worker_start``.
"""

from __future__ import annotations

from typing import Any

from layered.layering.memory import keep_freed_memory, plain_pages

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    """Called by Dask as ``worker`` starts."""
    plain_pages()
    keep_freed_memory(worker.memory_manager.memory_limit or None)
