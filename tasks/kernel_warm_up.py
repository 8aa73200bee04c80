"""Worker preload of the matmul and mnist pipelines: the product kernel resolved at start.

Resolving the default kernel (``"auto"``) where it is torch int8 imports torch and probes
it, about 1.5 s per worker process. A LocalCluster started for a matmul or mnist run
preloads this module (:func:`layered.cluster.local_cluster`), which does that in a
background thread as each worker starts, while the command imports the flow and waits for
the Prefect API, instead of in the worker's first row block or chunk, on the path of
resolution 1. Clusters of other pipelines do not import torch for nothing. A worker with
little memory resolves within its limit as its blocks would
(:func:`layered.tasks.kernels.warm_kernel`).
"""

from __future__ import annotations

import threading
from typing import Any

from layered.tasks.kernels import warm_kernel

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    """Called by Dask as ``worker`` starts: resolve the kernel in the background."""
    limit = worker.memory_manager.memory_limit or None
    threading.Thread(target=warm_kernel, args=(limit,), name="layered-kernel-warm-up",
                     daemon=True).start()
