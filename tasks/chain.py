"""A call that Dask runs after another one, or after all of a step: the links of
:func:`layered.tasks.fanout.submit`'s ``after`` and ``after_all``, on the workers.

Imports nothing (no Prefect, no Dask), so that a worker loads it in no time when the first
chained call arrives; :mod:`layered.tasks.fanout`, which submits the calls, imports Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["after", "after_all"]


def after(fn: Callable[..., Any], args: tuple[object, ...], _previous: object) -> Any:
    """``fn(*args)``, run by Dask once ``_previous`` (a call's future) has its result.

    Examples
    --------
    >>> after(max, (2, 5), "the result of the call before")
    5
    """
    return fn(*args)


def after_all(fn: Callable[..., Any], args: tuple[object, ...], previous: list[Any]) -> Any:
    """``fn(*args, previous)``, run by Dask once every call of ``previous`` (their futures)
    has its result; ``fn`` gets those results, in order.

    Examples
    --------
    >>> after_all(sorted, (), [5, 3])
    [3, 5]
    """
    return fn(*args, previous)
