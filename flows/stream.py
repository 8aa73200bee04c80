"""The stream experiment as a Prefect flow: simulated, or for real on a Dask cluster.

Simulated (:func:`layered.layering.stream.simulate_stream`), the paper's model runs with
its own parameters in about a second. For real, jobs are fed to the cluster at their
Poisson times (:mod:`layered.tasks.stream`); each pass of the stream (no deadline, then
each deadline, with and without layering) is one Prefect task, and the run is compared
with the simulation of its very same draws. Either way the flow writes ``summary.json``
and two PNG plots to its output directory and shows a table artifact per resolution.

The flow drives the cluster with plain ``distributed`` from the flow process (a mini-job
lasts milliseconds), so it uses Prefect's default task runner.

Examples
--------
From Python::

    from layered.flows.stream import stream_flow
    summary = stream_flow(simulate=True)                      # the paper's defaults
    summary = stream_flow(jobs=30, slowdowns={"1": 3.0})      # LocalCluster, 2 workers

From the shell (:mod:`layered.stream_cli`): ``layered run stream --simulate`` or
``layered run stream --slowdown 1=3 --json real.json``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from layered.data.store import new_run_id
from layered.data.stream_jobs import ImageJobs, JobSource, SyntheticJobs
from layered.layering.stream import StreamModel, StreamSimulation, simulate_stream
from layered.reports import stream as stream_report
from layered.settings import REAL_DEFAULTS, Settings
from layered.tasks.stream import (
    PassRecord,
    StreamPlan,
    cluster_workers,
    plan_stream,
    run_stream,
    run_stream_pass,
)

__all__ = ["SIMULATED_DEADLINES", "simulated_stream", "stream_flow", "stream_pass"]

SIMULATED_DEADLINES = tuple(float(d) for d in range(31))


@task(name="simulate-stream", cache_policy=NO_CACHE)
def simulated_stream(model: StreamModel, deadlines: Sequence[float], rule: str) -> StreamSimulation:
    """Simulate the stream with and without layering."""
    return simulate_stream(model, deadlines, rule)


def _pass_name() -> str:
    p = task_run.parameters
    kind = "layered" if p["layered"] else "no-layering"
    deadline = p["deadline"]
    return f"stream-{kind}-" + ("no-deadline" if math.isinf(deadline) else f"D{deadline:g}")


@task(name="stream-pass", task_run_name=_pass_name, cache_policy=NO_CACHE)
def stream_pass(
    client: Any, plan: StreamPlan, deadline: float, rule: str, layered: bool
) -> PassRecord:
    """One pass of the stream through the cluster (see :func:`run_stream_pass`)."""
    return run_stream_pass(client, plan, deadline, rule, layered)


@contextlib.contextmanager
def _dask_client(settings: Settings) -> Iterator[Any]:
    """A client of the scheduler at ``settings.dask_address``, or of a new LocalCluster."""
    from distributed import Client

    from layered.cluster import check_scheduler, local_cluster

    with contextlib.ExitStack() as stack:
        if settings.dask_address:
            check_scheduler(settings.dask_address, settings.scheduler_timeout_s)
            target: Any = settings.dask_address
        else:
            target = stack.enter_context(local_cluster(settings))
        yield stack.enter_context(Client(target, timeout=settings.scheduler_timeout_s))


def _job_source(rows: int, cols: int, seed: int, data_dir: str | None) -> JobSource:
    if data_dir:
        return ImageJobs.from_mnist(data_dir, rows, seed)
    return SyntheticJobs(rows, cols, seed)


@flow(name="layered-stream", validate_parameters=True)
def stream_flow(
    simulate: bool = False,
    jobs: int | None = None,
    rate: float = 0.01,
    tasks: int = 1000,
    workers: int = 5,
    gamma: float = 1.0,
    layering: str = "one-per-resolution",
    pipelined: bool = False,
    rule: str = "published",
    deadlines: list[float] | None = None,
    seed: int = 0,
    time_scale: float = REAL_DEFAULTS.time_scale,
    slowdowns: dict[str, float] | None = None,
    cols: int = REAL_DEFAULTS.cols,
    data_dir: str | None = None,
    address: str | None = None,
    n_workers: int | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """The stream experiment of METHOD §5, simulated or on Dask.

    Parameters
    ----------
    simulate : run the model instead of the cluster.
    jobs : number of jobs (default 10,000 simulated, 30 real).
    rate, tasks, gamma, layering, pipelined, seed : the model (:class:`StreamModel`);
        ``tasks`` is also the number of rows of a real job.
    workers : simulated workers (a real run uses the cluster's).
    rule : "published" or "absolute".
    deadlines : deadlines in slots (default 0..30 simulated, [10] real).
    time_scale : seconds per slot of a real run.
    slowdowns : ``{worker name: factor}`` of a real run (speed ∝ 1/factor).
    cols, data_dir : columns of synthetic jobs, or an MNIST directory (real data).
    address, n_workers : an existing scheduler, or the LocalCluster's size.
    out_dir : where ``summary.json`` and the plots go (default a new directory in the
        run store).

    Returns
    -------
    dict
        The summary (see :func:`layered.layering.stream.stream_summary`).
    """
    settings = Settings.from_env().replace(dask_address=address, n_workers=n_workers)
    out = Path(out_dir) if out_dir else settings.store / new_run_id("stream")
    if simulate:
        model = StreamModel(jobs or 10_000, rate, tasks=tasks, workers=workers, gamma=gamma,
                            layering=layering, pipelined=pipelined, seed=seed)
        sim = simulated_stream(model, deadlines or SIMULATED_DEADLINES, rule)
        summary = sim.summary()
        plots = [
            stream_report.plot_delay_cdf(sim.layered, sim.one_shot, out / "delay_cdf.png", "slots"),
            stream_report.plot_success(summary, out / "success.png", "slots"),
        ]
    else:
        with _dask_client(settings) as client:
            model = StreamModel(jobs or REAL_DEFAULTS.jobs, rate, tasks=tasks,
                                workers=len(cluster_workers(client)), gamma=gamma,
                                layering=layering, seed=seed)
            plan = plan_stream(client, model, _job_source(tasks, cols, seed, data_dir),
                               time_scale, slowdowns)
            run = run_stream(client, plan, deadlines or REAL_DEFAULTS.deadlines, rule,
                             run_pass=stream_pass)
        summary = run.summary()
        reference = (run.simulation(True), run.simulation(False))
        plots = [
            stream_report.plot_delay_cdf(run.outcome(True), run.outcome(False),
                                         out / "delay_cdf.png", "s", reference),
            stream_report.plot_success(summary, out / "success.png", "s", summary["simulation"]),
        ]
    summary["plots"] = [str(p) for p in plots]
    stream_report.write_summary(summary, out / "summary.json")
    stream_report.publish_stream_artifacts(f"stream-{summary['mode']}", summary, plots)
    return summary
