"""Fan-out inside a Prefect task: many small blocks of work on the task's Dask cluster.

A Prefect task runs one resolution in the flow's process (a few milliseconds of
orchestration) and fans its blocks (row blocks of W, chunks of samples) out as plain Dask
tasks (about a millisecond each) through the flow run's long-lived client (see
:class:`layered.task_runner.ClusterTaskRunner`); called on a Dask worker, it uses the
worker's client. Deadlines are cooperative: the task stops waiting when the deadline
passes, cancels the blocks still queued and ends as ``Cancelled`` (:func:`deadline_state`).

Examples
--------
Inside a task::

    outcomes = fan_out([Call(f"rows-{a}-{b}", work, (job, (a, b))) for a, b in blocks],
                       deadline)
    if outcomes is None:
        return deadline_state("resolution 2", deadline)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from distributed import as_completed, get_client, get_worker, secede
from prefect.context import FlowRunContext
from prefect.states import Cancelled, State

__all__ = ["Call", "fan_out", "deadline_state"]


@dataclass(frozen=True)
class Call:
    """One block of work: ``fn(*args)``, named ``label`` on the Dask dashboard."""

    label: str
    fn: Callable[..., object]
    args: tuple[object, ...]


def fan_out(
    calls: Sequence[Call], deadline: float | None, pinned: bool = False
) -> list[Any] | None:
    """Run every call on the cluster; their results in order.

    With ``pinned``, call ``i`` prefers the ``i``-th worker (round robin, by address), so
    the same row block lands on the same worker at every resolution and finds what that
    worker kept for it; any worker may still take it (a lost worker costs only reuse).
    Returns None (after cancelling the calls not yet finished) if ``deadline`` passes,
    at once (nothing submitted) if it passed before this task started.
    """
    if deadline is not None and time.time() >= deadline:
        return None
    client = _client()
    token = uuid.uuid4().hex[:8]  # distinct keys for concurrent runs on one cluster
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"]) if pinned else []
    futures = [
        client.submit(
            c.fn, *c.args, key=f"{c.label}-{token}",
            workers=[workers[i % len(workers)]] if workers else None,
            allow_other_workers=bool(workers),
        )
        for i, c in enumerate(calls)
    ]
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        for _ in as_completed(futures, timeout=timeout, loop=client.loop):
            pass
    except TimeoutError:
        client.cancel(futures)
        return None
    return list(client.gather(futures))


def _client() -> Any:
    """The client to fan out with: the flow run's (its task runner's), else the worker's.

    On a worker the calling task leaves the worker's thread pool, so the blocks can use
    its thread, and never rejoins: rejoining waits for a free thread, i.e. for a running
    block to end, which would delay the deadline by up to one block.
    """
    from layered.task_runner import ClusterTaskRunner

    context = FlowRunContext.get()
    if context is not None and isinstance(context.task_runner, ClusterTaskRunner):
        return context.task_runner.client
    try:
        get_worker()
    except ValueError:
        return get_client()
    secede()
    return get_client()


def deadline_state(what: str, deadline: float) -> State:
    late = time.time() - deadline
    return Cancelled(message=f"deadline passed {late:.2f} s ago during {what}; stopped")
