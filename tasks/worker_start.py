"""Worker preload of every layered cluster the command line starts: how the worker
allocates memory.

A worker process allocates per-block arrays it keeps (a row block's digits and their
kernel conversions, a chunk's activations) and fills them once: fresh pages, which are
cheaper without numpy's huge-page advice (see :func:`layered.layering.memory.plain_pages`).
A worker of a cluster started by hand gets the same with
``dask worker --preload layered.tasks.worker_start``.
"""

from __future__ import annotations

from typing import Any

from layered.layering.memory import plain_pages

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    """Called by Dask as ``worker`` starts."""
    plain_pages()
