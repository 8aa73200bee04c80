"""Test-only Dask worker preload: a pause before every matmul row block and mnist chunk, a
log of them, and the worker's peak memory.

Fault and deadline tests need a resolution that lasts long enough to be hit while it runs,
whatever the machine's speed. Started with ``dask worker --preload tests/worker_hooks.py``
and ``DELAYED_BLOCKS_DIR=DIR`` in its environment, a worker:

- sleeps ``DIR/delay`` seconds (re-read at every block; no file means no pause) before
  each row block of :func:`layered.tasks.matmul_blocks.layer_block` and each chunk of
  :func:`layered.tasks.mnist_chunks.layer_chunk`, which it wraps in place, so the arithmetic and
  the code path are production's;
- touches ``DIR/log/r<resolution>-rows<first row>-pid<worker pid>`` as each one starts.

Tests drive it through :class:`BlockControl`, and run :func:`reset_peak_memory` and
:func:`peak_memory` on the workers (``client.run``; the preload makes this module
importable there). Production code never imports this module.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "DELAYED_BLOCKS_DIR"
_LOG_NAME = re.compile(r"^r(\d+)-rows(\d+)-pid(\d+)$")


def dask_setup(worker: object) -> None:
    """Wrap ``layer_block`` and ``layer_chunk`` in this worker process (Dask calls this
    at start-up)."""
    import layered.tasks.matmul_blocks as matmul
    import layered.tasks.mnist_chunks as mnist

    control = Path(os.environ[ENV])
    original_block, original_chunk = matmul.layer_block, mnist.layer_chunk
    if hasattr(original_block, "__wrapped__"):  # preloaded twice in one process
        return

    def pause(resolution: int, start: int) -> None:
        (control / "log" / f"r{resolution}-rows{start}-pid{os.getpid()}").touch()
        delay = control / "delay"
        if delay.exists():
            time.sleep(float(delay.read_text()))

    @functools.wraps(original_block)  # same module and name: pickled by reference
    def delayed_block(job, resolution, previous, out, rows, *args, **kwargs):
        pause(resolution, rows[0])
        return original_block(job, resolution, previous, out, rows, *args, **kwargs)

    @functools.wraps(original_chunk)
    def delayed_chunk(job, previous, out, chunk, *args, **kwargs):
        pause(out.resolution, job.chunks()[chunk][0])
        return original_chunk(job, previous, out, chunk, *args, **kwargs)

    matmul.layer_block = delayed_block
    mnist.layer_chunk = delayed_chunk


@dataclass(frozen=True)
class BlockStart:
    """One logged block start: which resolution, first row, and the worker's process id."""

    resolution: int
    start: int
    pid: int


@dataclass(frozen=True)
class BlockControl:
    """The test side: set the pause, read and clear the log."""

    directory: Path

    @classmethod
    def create(cls, directory: Path) -> BlockControl:
        (directory / "log").mkdir(parents=True, exist_ok=True)
        return cls(directory)

    def set_delay(self, seconds: float) -> None:
        (self.directory / "delay").write_text(repr(float(seconds)))

    def clear(self) -> None:
        for path in (self.directory / "log").iterdir():
            path.unlink()

    def started(self, resolution: int | None = None) -> list[BlockStart]:
        found = []
        for path in (self.directory / "log").iterdir():
            match = _LOG_NAME.match(path.name)
            if match:
                found.append(BlockStart(*(int(g) for g in match.groups())))
        return [b for b in found if resolution is None or b.resolution == resolution]


def reset_peak_memory() -> None:
    """Make this process's peak resident size (VmHWM) its current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory() -> int:
    """This process's peak resident size since start or the last reset, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
