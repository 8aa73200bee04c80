"""The stream experiment for real, on a Dask cluster, with plain ``distributed``.

Jobs are matrix-vector products (:mod:`layered.data.stream_jobs`) that arrive at the
model's Poisson times, one slot lasting ``time_scale`` seconds. The driver (the client
process) serves them first-in first-out, one at a time:

1. at service start each worker receives its rows of ``W``, split into components on the
   worker (the load split of :func:`layered.layering.stream.load_split` decides how many
   rows, one row per task of the model);
2. resolution ``r`` is one *mini-job* per worker, pinned with ``workers=[address]``, that
   refines that worker's rows from ``Ω_{r-1}`` to ``Ω_r``
   (:func:`layered.layering.resolution_block`); the driver waits for all of them (the
   model's barrier), assembles ``Ω_r``, records its delay and asks the deadline rule
   whether the job goes on.

**Heterogeneity and stragglers** are injected, so that a run can be compared with its
own simulation on equal terms. Worker ``p``'s speed is ``μ_p ∝ 1/slowdown_p``
(normalised as in the model), and each mini-job lasts exactly the time the model draws
for that worker's round, ``Gamma(κ_p, f_r C/μ_p)`` slots: it computes its product and
then sleeps for the rest of that time. The simulation of the same draws
(:meth:`StreamRun.simulation`) is then what the run would give on an ideal cluster, and
real minus simulated delay is what the cluster adds (dispatch, transfers, a product
that overruns its drawn time).

**Deadlines are cooperative.** Under the absolute rule the deadline (an epoch time; the
workers' clocks must agree with the driver's, as they do on one host or under NTP)
travels into every mini-job, which stops waiting at it and reports the miss; the
driver then cancels what is left of the job. The published rule is decided by the driver
between resolutions (nothing of the job runs then, because of the barrier).

Examples
--------
::

    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        plan = plan_stream(client, StreamModel(jobs=20, tasks=200), SyntheticJobs(200, 64),
                           time_scale=0.002, slowdowns={"1": 3.0})
        run = run_stream(client, plan, deadlines=[10.0])
        run.summary()["resolutions"][0]["mean_delay"]   # seconds
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, Future

from layered.data.stream_jobs import JobSource, StreamJob, stream_jobs
from layered.layering import Ordering, Partition, SplitOperand, resolution_block, resolve_ordering
from layered.layering.stream import (
    DeadlineRule,
    StreamDraws,
    StreamModel,
    StreamOutcome,
    deadline_rule,
    draw_stream,
    resolution_offsets,
    serve_fifo,
    stream_outcome,
    stream_summary,
    work_fractions,
)

__all__ = [
    "MiniJobResult",
    "PassRecord",
    "StreamPlan",
    "StreamRun",
    "cluster_workers",
    "plan_stream",
    "refine_rows",
    "run_stream",
    "run_stream_pass",
]


# ---------------------------------------------------------------------------- on a worker
@dataclass(frozen=True)
class MiniJobResult:
    """What a mini-job returns.

    Attributes
    ----------
    estimate : ndarray or None
        ``Ω_r`` of the worker's rows; None when the mini-job missed its deadline.
    started : float
        Epoch time the mini-job started on the worker.
    compute_s : float
        Seconds spent computing (the rest of its duration was the injected wait).
    """

    estimate: np.ndarray | None
    started: float
    compute_s: float


def refine_rows(
    rows: SplitOperand,
    x: SplitOperand,
    order: Ordering,
    resolution: int,
    previous: MiniJobResult | None,
    duration_s: float,
    deadline: float = math.inf,
) -> MiniJobResult:
    """One mini-job: refine a worker's rows by one resolution, lasting ``duration_s``.

    Parameters
    ----------
    rows, x : SplitOperand
        The worker's rows of ``W`` and the whole vector, both split.
    order : Ordering
    resolution : int
        1-based resolution to compute.
    previous : MiniJobResult or None
        The same rows at the previous resolution (None for the first).
    duration_s : float
        How long the mini-job lasts in all (its model-drawn round time).
    deadline : float
        Epoch time at which to give up (``inf``: never).
    """
    started = time.time()
    if started >= deadline:
        return MiniJobResult(None, started, 0.0)
    before = None if previous is None else previous.estimate
    estimate = resolution_block(rows, x, order, resolution, before, bound="static")[0].estimate
    computed = time.time()
    due = started + duration_s
    time.sleep(max(0.0, min(due, deadline) - computed))
    return MiniJobResult(None if due > deadline else estimate, started, computed - started)


# ---------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class StreamPlan:
    """Everything a real stream run needs, fixed before it starts.

    Attributes
    ----------
    model : StreamModel
        ``tasks`` is the number of rows per job, ``workers`` the cluster's size.
    draws : StreamDraws
        Speeds (from the slow-down factors), load split, arrivals and round times.
    jobs : tuple of StreamJob
    partition : Partition
        Splits both operands.
    layered, one_shot : Ordering
        The layering's ordering, and one group holding every pair (no layering).
    workers : tuple of str
        Worker addresses, in the order of ``draws.split``.
    names : tuple of str
        Their Dask names.
    slowdowns : tuple of float
        Each worker's slow-down factor.
    time_scale : float
        Seconds per slot.
    """

    model: StreamModel
    draws: StreamDraws
    jobs: tuple[StreamJob, ...]
    partition: Partition
    layered: Ordering
    one_shot: Ordering
    workers: tuple[str, ...]
    names: tuple[str, ...]
    slowdowns: tuple[float, ...]
    time_scale: float


def cluster_workers(client: Client) -> dict[str, str]:
    """``{address: name}`` of the cluster's workers, ordered by name.

    Raises
    ------
    RuntimeError
        If the cluster has no worker.
    """
    info = client.scheduler_info()["workers"]
    if not info:
        raise RuntimeError(f"the Dask cluster at {client.scheduler.address} has no workers")
    named = sorted(((str(w.get("name", addr)), addr) for addr, w in info.items()))
    return {addr: name for name, addr in named}


def plan_stream(
    client: Client,
    model: StreamModel,
    source: JobSource,
    time_scale: float,
    slowdowns: Mapping[str, float] | None = None,
) -> StreamPlan:
    """Fix a real run: workers, their speeds and split, arrivals, round times and jobs.

    Parameters
    ----------
    client : Client
    model : StreamModel
        Its ``workers`` must equal the cluster's and its ``tasks`` the source's rows.
    source : JobSource
    time_scale : float
        Seconds per slot (> 0).
    slowdowns : mapping of worker name to factor, optional
        ``>= 1`` slows a worker down (speed ``∝ 1/factor``); unnamed workers get 1.

    Raises
    ------
    ValueError
        On a size mismatch, a bad time scale, a pipelined model (a real run keeps the
        barrier), or a slow-down for an unknown worker or not > 0.
    """
    workers = cluster_workers(client)
    names = tuple(workers.values())
    factors = _slowdown_factors(names, slowdowns or {})
    if model.workers != len(workers):
        raise ValueError(
            f"the model has {model.workers} workers but the cluster has {len(workers)}"
        )
    if model.tasks != source.rows:
        raise ValueError(
            f"the model has {model.tasks} tasks per job but jobs have {source.rows} rows"
        )
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ValueError(
            f"time_scale must be a finite number of seconds > 0, got {time_scale!r}"
        )
    if model.pipelined:
        raise ValueError("a real run keeps the barrier between resolutions; use pipelined=False")
    p = source.partition
    layered = resolve_ordering(model.layering, p, p)
    one_shot = Ordering([[pair for group in layered.groups for pair in group]], p.m, p.m)
    draws = draw_stream(model, [1.0 / f for f in factors], work_fractions(layered, p, p))
    return StreamPlan(
        model=model,
        draws=draws,
        jobs=tuple(stream_jobs(draws.arrivals, source)),
        partition=p,
        layered=layered,
        one_shot=one_shot,
        workers=tuple(workers),
        names=names,
        slowdowns=factors,
        time_scale=float(time_scale),
    )


def _slowdown_factors(names: Sequence[str], slowdowns: Mapping[str, float]) -> tuple[float, ...]:
    given = {str(name): float(factor) for name, factor in slowdowns.items()}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(
            f"slow-down given for unknown worker(s) {unknown}; workers are {list(names)}"
        )
    factors = tuple(given.get(name, 1.0) for name in names)
    bad = [(n, f) for n, f in zip(names, factors, strict=True) if not (f > 0 and math.isfinite(f))]
    if bad:
        raise ValueError(f"slow-down factors must be finite and > 0, got {bad}")
    return factors


# ---------------------------------------------------------------------------- one pass
@dataclass(frozen=True)
class PassRecord:
    """One pass of the stream through the cluster under one deadline.

    Times are seconds since the pass began.

    Attributes
    ----------
    layered : bool
    deadline : float
        In slots (``inf``: none).
    rule : str
    arrival, start, end : ndarray (J,)
        Arrival, service start and the time the job freed the cluster (NaN for a job
        dropped because it could only start after its deadline).
    completion : ndarray (J, R)
        When each resolution was assembled; NaN where it failed.
    estimates : tuple of tuple of ndarray
        Per job, ``Ω_1 .. Ω_r`` for every resolution assembled (a resolution the rule
        then failed included).
    compute : ndarray (J, R, P)
        Seconds each mini-job computed (NaN where it did not run).
    """

    layered: bool
    deadline: float
    rule: str
    arrival: np.ndarray
    start: np.ndarray
    end: np.ndarray
    completion: np.ndarray
    estimates: tuple[tuple[np.ndarray, ...], ...]
    compute: np.ndarray

    @property
    def success(self) -> np.ndarray:
        """(J, R) bool: which resolutions succeeded."""
        return np.isfinite(self.completion)

    @property
    def delays(self) -> np.ndarray:
        """(J, R) completion − arrival in seconds; NaN where a resolution failed."""
        return self.completion - self.arrival[:, None]


def run_stream_pass(
    client: Client,
    plan: StreamPlan,
    deadline: float = math.inf,
    rule: str | DeadlineRule = "published",
    layered: bool = True,
) -> PassRecord:
    """Feed every job of ``plan`` to the cluster at its arrival time and serve it.

    Parameters
    ----------
    client : Client
    plan : StreamPlan
    deadline : float
        In slots; ``inf`` runs without deadline.
    rule : {"published", "absolute"} or DeadlineRule
    layered : bool
        False serves each job in one resolution (no layering).
    """
    decide = deadline_rule(rule)
    order = plan.layered if layered else plan.one_shot
    rounds = (plan.draws.layered if layered else plan.draws.one_shot) * plan.time_scale
    jobs, resolutions = len(plan.jobs), order.resolutions
    arrival = np.array([job.arrival for job in plan.jobs]) * plan.time_scale
    following = np.append(arrival[1:], math.inf)
    start = np.full(jobs, np.nan)
    end = np.full(jobs, np.nan)
    completion = np.full((jobs, resolutions), np.nan)
    compute = np.full((jobs, resolutions, len(plan.workers)), np.nan)
    estimates: list[tuple[np.ndarray, ...]] = []
    origin = time.time()
    limit = deadline * plan.time_scale
    for j, job in enumerate(plan.jobs):
        time.sleep(max(0.0, origin + arrival[j] - time.time()))
        begun = time.time() - origin
        task_deadline = origin + decide.task_deadline(arrival[j], limit)
        if task_deadline <= time.time():  # it would start after its deadline: dropped
            estimates.append(())
            continue
        start[j] = begun
        served = _serve_job(client, plan, job, order, rounds[j], task_deadline, compute[j])
        reached: list[np.ndarray] = []
        for r, (estimate, done) in enumerate(served):
            reached.append(estimate)
            if decide.fails(done - origin, begun, arrival[j], following[j], limit):
                break
            completion[j, r] = done - origin
        served.close()  # cancels what is left of the job
        end[j] = time.time() - origin
        estimates.append(tuple(reached))
    return PassRecord(
        layered, float(deadline), decide.name, arrival, start, end, completion, tuple(estimates),
        compute,
    )


def _serve_job(
    client: Client,
    plan: StreamPlan,
    job: StreamJob,
    order: Ordering,
    rounds: np.ndarray,
    deadline: float,
    compute: np.ndarray,
) -> Generator[tuple[np.ndarray, float], None, None]:
    """Yield ``(Ω_r, time assembled)`` resolution by resolution; stop at a missed deadline.

    Closing the generator early cancels every future of the job still pending.
    """
    x = SplitOperand(job.vector, plan.partition, name="X")
    busy = [
        (p, addr, a, b)
        for p, (addr, (a, b)) in enumerate(
            zip(plan.workers, plan.draws.split.row_ranges(), strict=True)
        )
        if b > a
    ]
    # Rows travel with the submit (no blocking scatter) and are split on their worker.
    blocks = {
        p: client.submit(
            SplitOperand, job.matrix[a:b], plan.partition, name="W", workers=[addr], pure=False
        )
        for p, addr, a, b in busy
    }
    previous: dict[int, Future | None] = {p: None for p, *_ in busy}
    futures: list[Future] = list(blocks.values())
    try:
        for r in range(order.resolutions):
            current = {
                p: client.submit(
                    refine_rows, blocks[p], x, order, r + 1, previous[p], float(rounds[r, p]),
                    deadline, workers=[addr], pure=False,
                )
                for p, addr, *_ in busy
            }
            futures.extend(current.values())
            # One gather: waiting and fetching each future apart costs a round trip each.
            results = dict(zip(current, client.gather(list(current.values())), strict=True))
            done = time.time()
            for p, res in results.items():
                compute[r, p] = res.compute_s
            if any(res.estimate is None for res in results.values()):
                return
            previous = dict(current)
            yield np.concatenate([results[p].estimate for p, *_ in busy]), done
    finally:
        client.cancel(futures)


# ---------------------------------------------------------------------------- a whole run
@dataclass(frozen=True)
class StreamRun:
    """A real run: one pass without deadline, then one per deadline, with and without
    layering, and its simulation on the same draws.

    Attributes
    ----------
    plan : StreamPlan
    rule : str
    deadlines : ndarray
        In slots.
    layered, one_shot : tuple of PassRecord
        ``[0]`` without deadline, then one per deadline.
    """

    plan: StreamPlan
    rule: str
    deadlines: np.ndarray
    layered: tuple[PassRecord, ...]
    one_shot: tuple[PassRecord, ...]

    def outcome(self, layered: bool = True) -> StreamOutcome:
        """Measured delays (no-deadline pass) and success rates, in seconds."""
        passes = self.layered if layered else self.one_shot
        resolutions = passes[0].completion.shape[1]
        success = np.array([p.success.mean(axis=0) for p in passes[1:]])
        rates = success.reshape(len(passes) - 1, resolutions).T
        return StreamOutcome(self.deadlines * self.plan.time_scale, passes[0].delays, rates)

    def simulation(self, layered: bool = True) -> StreamOutcome:
        """The model's outcome on the very same arrivals and round times, in seconds."""
        rounds = self.plan.draws.layered if layered else self.plan.draws.one_shot
        offsets = resolution_offsets(rounds)
        return stream_outcome(self.plan.draws.arrivals, offsets, self.deadlines, self.rule).scaled(
            self.plan.time_scale
        )

    def summary(self) -> dict[str, Any]:
        """The fixed summary fields (seconds), plus the plan and the same-draws simulation."""
        out = stream_summary("dask", self.outcome(True), self.outcome(False))
        plan = self.plan
        out.update(
            rule=self.rule,
            time_scale=plan.time_scale,
            deadlines_slots=self.deadlines.tolist(),
            model={k: getattr(plan.model, k) for k in plan.model.__dataclass_fields__},
            workers=list(plan.names),
            slowdowns=list(plan.slowdowns),
            speeds=plan.draws.speeds.tolist(),
            split=plan.draws.split.tasks.tolist(),
            compute_s_mean=float(np.nanmean(self.layered[0].compute)),
            overhead=self.overhead(),
            simulation=stream_summary("simulate", self.simulation(True), self.simulation(False)),
        )
        return out

    def overhead(self) -> dict[str, Any]:
        """What the cluster added to the model in the layered pass without deadline (s).

        ``mean_wait_s`` (service start − arrival) against the same-draws simulation's, and
        per resolution the mean of (completion − service start − the drawn time).
        """
        record, draws, scale = self.layered[0], self.plan.draws, self.plan.time_scale
        offsets = resolution_offsets(draws.layered)
        simulated = serve_fifo(draws.arrivals, offsets, [math.inf])
        service = record.completion - record.start[:, None] - offsets * scale
        return {
            "mean_wait_s": float(np.mean(record.start - record.arrival)),
            "simulated_mean_wait_s": float(np.mean(simulated.start[:, 0] - draws.arrivals) * scale),
            "service_overhead_s": np.mean(service, axis=0).tolist(),
        }


def run_stream(
    client: Client,
    plan: StreamPlan,
    deadlines: Iterable[float] = (10.0,),
    rule: str = "published",
    run_pass: Callable[[Client, StreamPlan, float, str, bool], PassRecord] = run_stream_pass,
) -> StreamRun:
    """Run the stream without deadline and under each deadline (slots), layered and not.

    ``run_pass`` runs one pass (default :func:`run_stream_pass`; a flow passes its task).
    """
    d = np.asarray(list(deadlines), dtype=np.float64)
    name = deadline_rule(rule).name
    passes = {
        layered: tuple(
            run_pass(client, plan, deadline, name, layered)
            for deadline in (math.inf, *d.tolist())
        )
        for layered in (True, False)
    }
    return StreamRun(plan, name, d, passes[True], passes[False])
