"""A call that Dask runs after another one: the link of :func:`layered.tasks.fanout.submit`'s
``after``, on the workers.

Imports nothing (no Prefect, no Dask), so that a worker loads it in no time when the first
chained call arrives; :mod:`layered.tasks.fanout`, which submits the calls, imports Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["after"]


def after(fn: Callable[..., Any], args: tuple[object, ...], _previous: object) -> Any:
    """``fn(*args)``, run by Dask once ``_previous`` (a call's future) has its result.

    Examples
    --------
    >>> after(max, (2, 5), "the result of the call before")
    5
    """
    return fn(*args)
