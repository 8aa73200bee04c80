"""The life of a run inside a flow, shared by the matmul, mnist and train flows.

A flow opens its run with :func:`running`: the Dask cluster is connected before anything is
written, a dead earlier invocation of the run is closed in Prefect, the manifest says
``Running`` while the flow works, ``Failed`` (with the error) if it raises and ``Crashed``
if it is interrupted, the persisted resolutions kept. Between those, the layering loop
runs one task per resolution with :func:`run_task`, which stops the run at its deadline
whatever the orchestration's latency; the loop returns a :class:`Stop`, and
:func:`finish` plots, records and publishes the outcome.

Examples
--------
The shape of a layered flow's body::

    with lifecycle.running(runs, run_id, "matmul", spec.parameters, started_at,
                           deadline_at) as run:
        stop = layer_resolutions(run, ...)  # -> Stop
        return lifecycle.finish(run, runs, stop, plot=report.plot_matmul,
                                summarize=matmul_summary, fields=SUMMARY_FIELDS)
"""

from __future__ import annotations

import contextlib
import contextvars
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from distributed.comm import CommClosedError
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
from prefect.states import Cancelled, Crashed, State
from prefect.tasks import Task

from layered.cluster import SchedulerLostError, SchedulerUnreachableError, connect_task_runner
from layered.data.store import Run, RunStore
from layered.flows import signals
from layered.task_runner import ClusterTaskRunner
from layered.tasks import report

__all__ = ["Stop", "Clock", "Publisher", "running", "run_task", "finish", "UNPERSISTED"]

#: Flow options: a run's results are its run store, so Prefect persists none, and its
#: storage is named, so Prefect does not ask its server where it would persist them (three
#: API calls, about 15 ms, as each flow run starts).
UNPERSISTED: dict[str, Any] = {
    "persist_result": False,
    "result_storage": Path(PREFECT_LOCAL_STORAGE_PATH.value()),
}


@dataclass(frozen=True)
class Stop:
    """Why and when the layering stopped; ``state`` is the Cancelled state of a deadline
    stop."""

    reason: str
    at: float
    state: State | None = None


class Clock:
    """Seconds of layering so far, continuing a resumed run's clock."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.base = entries[-1]["elapsed_s"] if entries else 0.0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return self.base + time.perf_counter() - self.start


class Publisher:
    """What the UI shows of a run (or what the store commits), done off the layering's path.

    Calls run in order on one thread, in the flow run's context (its logger, its
    artifacts), so that the Prefect API's latency (tens of milliseconds an artifact) or a
    commit's fsync neither delays the next resolution nor a stop at the deadline. Leaving
    the ``with`` block waits for them (and raises the first that failed, unless the block
    raised).

    Examples
    --------
    >>> with Publisher() as ui:
    ...     later = ui.submit(sum, [1, 2, 3])
    >>> later.result()
    6
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layered-ui")
        self._calls: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Call ``fn(*args, **kwargs)`` after the calls submitted before; its future."""
        call = self._pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        self._calls.append(call)
        return call

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self._pool.shutdown(wait=True)
        if kind is None:
            for call in self._calls:
                call.result()


@contextlib.contextmanager
def running(
    runs: RunStore, run_id: str, kind: str, parameters: Mapping[str, Any],
    started_at: float, deadline_at: float | None = None,
) -> Iterator[Run]:
    """The run, opened for this flow run and marked ``Running``; ``Failed`` if the body raises,
    ``Crashed`` if it is interrupted (Ctrl-C, SIGTERM), as Prefect marks the flow run.

    Raises whatever opening the run raises (a second writer, changed parameters) before
    anything is written, and :class:`~layered.cluster.SchedulerUnreachableError`
    when the flow's Dask cluster does not answer.
    """
    _connect_cluster()
    with runs.open(run_id, kind=kind, parameters=parameters) as run:
        _close_dead_invocation(run)
        run.record_outcome(status="Running", stopped_reason=None, error=None,
                           flow_run_id=flow_run.id, started_at=started_at,
                           deadline_at=deadline_at, stopped_at=None, finished_at=None)
        with _noting_signals() as signals:
            try:
                yield run
            except BaseException as exc:
                caught = signals[0] if signals else None
                if caught is None and isinstance(exc, Exception):
                    run.record_outcome(status="Failed", error=f"{type(exc).__name__}: {exc}",
                                       stopped_at=time.time())
                    raise
                # Ctrl-C or SIGTERM. Prefect raises the signal as an exception wherever the
                # flow is, and Prefect's own code may turn it into another error (a
                # serializer's, say): the run is marked as interrupted all the same.
                name = signal.Signals(caught).name if caught else type(exc).__name__
                run.record_outcome(status="Crashed", stopped_at=time.time(),
                                   error=f"interrupted by {name}; resume with --run-id"
                                   f" {run.run_id}")
                if isinstance(exc, Exception) and caught == signal.SIGTERM:
                    raise TerminationSignal(signal.SIGTERM) from exc  # Crashed in Prefect
                if isinstance(exc, Exception):
                    raise KeyboardInterrupt from exc
                raise


@contextlib.contextmanager
def _noting_signals() -> Iterator[list[int]]:
    """The SIGINT and SIGTERM received meanwhile (the handlers before still run)."""
    caught: list[int] = []

    def note(signum: int, frame: FrameType | None, previous: Any) -> None:
        caught.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    with signals.handling((signal.SIGINT, signal.SIGTERM), note):
        yield caught


def _connect_cluster() -> None:
    """Connect the flow run's cluster before anything is written (see layered.cluster)."""
    context = FlowRunContext.get()
    if context is not None and isinstance(context.task_runner, ClusterTaskRunner):
        connect_task_runner(context.task_runner)


def _close_dead_invocation(run: Run) -> None:
    """Mark ``Crashed`` the flow run of an earlier invocation that died writing this run.

    The manifest says ``Running`` only while an invocation works on the run; as this one
    holds the run's lock, that invocation's process is gone (killed, or its machine lost).
    """
    previous = run.manifest.get("flow_run_id")
    if run.manifest.get("status") != "Running" or not previous or previous == flow_run.id:
        return
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(previous).state
        except ObjectNotFound:  # another Prefect API, or its database was reset
            return
        if state is not None and not state.is_final():
            client.set_flow_run_state(previous, Crashed(
                message=f"its process died while writing run {run.run_id!r} (found by flow"
                f" run {flow_run.id}, which resumed the run)"), force=True)


def run_task(
    task: Task[..., Any], *args: Any, what: str, run: Run
) -> Any:
    """Call ``task(*args)`` in the flow's process: its result, or a deadline :class:`Stop`.

    The task is a Prefect task run (in the UI, named as the task names it) whose blocks run
    on the Dask cluster; it sees the deadline itself, stops waiting for its blocks when it
    passes (cancelling those still queued) and ends Cancelled, so the run stops within
    one block of its deadline.

    Raises
    ------
    SchedulerLostError
        If Dask cancelled the task's blocks (its client gave up reconnecting to a lost
        scheduler after its timeout, or the scheduler restarted and forgot them), or the
        scheduler no longer answers.
    """
    state = task(*args, return_state=True)
    if state.is_cancelled():
        return Stop("deadline", time.time(), state)
    try:
        return state.result()
    except (CancelledError, CommClosedError, SchedulerUnreachableError) as exc:
        raise SchedulerLostError(
            f"the Dask cluster lost {what} of run {run.run_id!r}: its scheduler stopped"
            f" answering, or restarted and forgot the task ({exc}). The resolutions"
            f" persisted so far are kept in {run.path}; resume with --run-id {run.run_id}"
            " once a scheduler answers."
        ) from exc


def finish(
    run: Run,
    runs: RunStore,
    stop: Stop,
    plot: Callable[[list[dict[str, Any]], Path], list[Path]],
    summarize: Callable[[Mapping[str, Any], Path], dict[str, Any]],
    fields: Sequence[str],
) -> dict[str, Any] | State:
    """Plot, record the outcome, publish the summary; Cancelled when the deadline stopped it.

    The manifest's ``stopped_at`` is when the layering stopped, ``finished_at`` when the
    reporting after it did. Returns ``summarize(manifest, store)``, or the Cancelled state
    naming the resolution the run kept.
    """
    status = "Cancelled" if stop.reason == "deadline" else "Completed"
    entries = run.completed_resolutions()
    plots = plot(entries, run.path / "plots") if entries else []
    run.record_outcome(status=status, stopped_reason=stop.reason, stopped_at=stop.at,
                       finished_at=time.time())
    summary = summarize(run.manifest, runs.root)
    report.publish_summary(report.artifact_key(run.manifest["kind"], run.run_id),
                           {**summary, "stopped_reason": stop.reason}, plots, fields=fields)
    if stop.reason == "deadline":
        kept = entries[-1]["resolution"] if entries else "none"
        message = stop.state.message if stop.state is not None else "deadline passed"
        return Cancelled(message=f"{message}; kept resolution {kept}")
    return summary
