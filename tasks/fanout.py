"""Fan-out inside a Prefect task: many small blocks of work on the task's Dask cluster.

A Prefect task runs one resolution in the flow's process (a few milliseconds of
orchestration) and fans its blocks (row blocks of W, chunks of samples) out as plain Dask
tasks (about a millisecond each) through the flow run's long-lived client (see
:class:`layered.task_runner.ClusterTaskRunner`); called on a Dask worker, it uses the
worker's client. Deadlines are cooperative: the task stops waiting when the deadline
passes, cancels the blocks still queued and ends as ``Cancelled`` (:func:`deadline_state`).

A step whose blocks depend row by row on the step before can be submitted while that step
still runs (:func:`submit` with ``after``): each block starts on its worker as soon as its
own predecessor is done, with no round trip through the task that collects them.

Examples
--------
Inside a task::

    outcomes = fan_out([Call(f"rows-{a}-{b}", work, (job, (a, b))) for a, b in blocks],
                       deadline)
    if outcomes is None:
        return deadline_state("resolution 2", deadline)

The next step chained on this one, submitted before this one is collected::

    now = submit(calls, pinned=True)
    ahead = submit(next_calls, after=now)  # block i after block i of `now`
    outcomes = collect(now, deadline)      # None at the deadline (cancel `ahead` then)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import as_completed, get_client, get_worker, secede
from prefect.context import FlowRunContext
from prefect.states import Cancelled, State

from layered.tasks import chain

__all__ = ["Call", "Submitted", "fan_out", "submit", "collect", "deadline_state"]


@dataclass(frozen=True)
class Call:
    """One block of work: ``fn(*args)``, named ``label`` on the Dask dashboard."""

    label: str
    fn: Callable[..., object]
    args: tuple[object, ...]


@dataclass(frozen=True)
class Submitted:
    """Calls submitted to the cluster and not collected yet: their futures, in order, the
    workers they were pinned to (round robin; empty if not pinned), and their Dask
    priority (a step chained after another runs after it on each worker)."""

    futures: list[Any]
    workers: list[str] = field(default_factory=list)
    priority: int = 0

    def cancel(self) -> None:
        """Drop the calls still queued (a running call runs to its end, unawaited)."""
        if self.futures:
            self.futures[0].client.cancel(self.futures)


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
    return collect(submit(calls, pinned), deadline)


def submit(calls: Sequence[Call], pinned: bool = False, after: Submitted | None = None,
           after_all: Submitted | None = None) -> Submitted:
    """Submit every call to the cluster (see :func:`fan_out` for ``pinned``).

    With ``after`` (as many calls, submitted before), call ``i`` starts once call ``i`` of
    ``after`` has finished, on the same worker where they are pinned: a step that reads
    what the step before wrote for the same rows is queued behind it and follows it at
    once. Should Dask lose a finished call of ``after`` (its worker died) before its
    follower ran, it runs that call again first. Its calls rank below those of ``after``
    on every worker: a worker finishes every block of the earlier step it holds before
    it starts on the next step (without priorities, Dask ran each follower as soon as
    its predecessor ended, ahead of the earlier step's remaining blocks, which delayed
    that step's end by up to half its length).

    With ``after_all`` instead, every call starts once all calls of ``after_all`` have
    finished, and gets their results, in order, as its last argument (pinned like them).
    """
    if after is not None and len(after.futures) != len(calls):
        raise ValueError(f"{len(calls)} calls cannot follow {len(after.futures)} calls one"
                         " to one")
    client = _client()
    token = uuid.uuid4().hex[:8]  # distinct keys for concurrent runs on one cluster
    before = after or after_all
    if before is not None:
        workers = before.workers  # the same workers, and no round trip to ask for them
    else:
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"]) if pinned else []
    priority = 0 if before is None else before.priority - 1
    futures = []
    for i, c in enumerate(calls):
        # A chained call is a light wrapper (no Prefect to import on the worker).
        fn, args = c.fn, c.args
        if after is not None:
            fn, args = chain.after, (c.fn, c.args, after.futures[i])
        elif after_all is not None:
            fn, args = chain.after_all, (c.fn, c.args, after_all.futures)
        futures.append(client.submit(
            fn, *args, key=f"{c.label}-{token}",
            workers=[workers[i % len(workers)]] if workers else None,
            allow_other_workers=bool(workers), priority=priority,
        ))
    return Submitted(futures, workers, priority)


def collect(submitted: Submitted, deadline: float | None) -> list[Any] | None:
    """The results of submitted calls, in order; None (after cancelling the calls not yet
    finished) if ``deadline`` passes first."""
    futures = submitted.futures
    if not futures:
        return []
    client = futures[0].client
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        for _ in as_completed(futures, timeout=timeout, loop=client.loop):
            pass
    except TimeoutError:
        submitted.cancel()
        return None
    return list(client.gather(futures))


def _client() -> Any:
    """The client to fan out with: the flow run's (its task runner's), else the worker's.

    On a worker the calling task leaves the worker's thread pool, so the blocks can use
    its thread, and never rejoins: rejoining waits for a free thread, i.e. for a running
    block to end, which would delay the deadline by up to one block. (It leaves once: a
    task may submit several steps.)
    """
    from layered.task_runner import ClusterTaskRunner

    context = FlowRunContext.get()
    if context is not None and isinstance(context.task_runner, ClusterTaskRunner):
        return context.task_runner.client
    try:
        get_worker()
    except ValueError:
        return get_client()
    if not getattr(_seceded, "done", False):
        secede()
        _seceded.done = True  # for the thread's life: a seceded thread leaves with its task
    return get_client()


#: Whether this (worker) thread has left the worker's thread pool.
_seceded = threading.local()


def deadline_state(what: str, deadline: float) -> State:
    late = time.time() - deadline
    return Cancelled(message=f"deadline passed {late:.2f} s ago during {what}; stopped")
