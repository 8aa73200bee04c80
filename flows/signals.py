"""Signal handlers for the length of a block, then the ones before them again.

The ``layered`` command and the flow lifecycle both handle SIGTERM (and the lifecycle
SIGINT) while a run is under way, each in its own way, without losing the handlers already
installed: Prefect's during a flow run, Python's default otherwise.

Examples
--------
>>> import signal
>>> def note(signum, frame, previous):
...     print(signal.Signals(signum).name)
>>> with handling((signal.SIGUSR1,), note):
...     signal.raise_signal(signal.SIGUSR1)
SIGUSR1
>>> signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

__all__ = ["handling"]

#: ``handler(signum, frame, previous)``: ``previous`` is the handler it replaced.
Handler = Callable[[int, "FrameType | None", Any], None]


@contextlib.contextmanager
def handling(signals: Sequence[signal.Signals], handler: Handler) -> Iterator[None]:
    """Handle ``signals`` with ``handler`` inside the block; restore the handlers before.

    Outside the main thread it installs nothing: Python delivers signals to the main
    thread only, and only there may handlers be set.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in signals}

    def handle(signum: int, frame: FrameType | None) -> None:
        handler(signum, frame, before[signal.Signals(signum)])

    for sig in signals:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)
