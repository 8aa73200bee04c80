"""The layered matmul flow: for each resolution, layer, decide, persist, repeat.

Each resolution is one Prefect task run in the flow's process whose row blocks run as
plain Dask tasks on the cluster (the workers split their blocks of W once and keep them);
after it, the flow decides whether to stop: at the last resolution, once the bound is
within the tolerance, or once the deadline has passed (keeping the best resolution so
far), while a thread of its own commits the estimate and its guaranteed bound to the run
directory and another shows the resolution in the UI. Re-running a run id resumes after
its last persisted resolution.

Faults end a run cleanly: an unreachable scheduler fails it before it writes anything, a
scheduler lost mid-run fails it (within the client's timeout) with
:class:`~layered.cluster.SchedulerLostError`, and any failure is recorded in the
manifest (``status: "Failed"``, ``error``) with the persisted resolutions kept. A flow
process that was killed cannot record anything; the invocation that resumes its run marks
the dead flow run ``Crashed`` in Prefect, so none stays ``Running`` in the UI. That life
of a run is :mod:`layered.flows.lifecycle`, shared with the mnist and train flows.

Examples
--------
From Python (a LocalCluster is started for the run)::

    from layered.flows.matmul import matmul_flow
    state = matmul_flow(shape=[512, 512, 128], seed=0, deadline=30, return_state=True)

From the shell: ``layered run matmul --shape 512 512 128 --deadline 30``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from layered.cluster import dask_task_runner
from layered.data.operands import (
    ArraySource,
    flops_affordable,
    open_operand,
    synthetic_dtype,
    write_synthetic_operands,
)
from layered.data.store import Run, RunStore, new_run_id
from layered.flows import lifecycle
from layered.flows.lifecycle import Stop
from layered.request import (
    MatmulRequest,
    MatmulSpec,
    check_kernel,
    check_limits,
    check_room,
    resolve_matmul,
    run_kernel,
)
from layered.settings import Settings
from layered.tasks import report
from layered.tasks.fanout import Submitted
from layered.tasks.matmul import (
    FollowingResolution,
    MatmulJob,
    ResolutionOutcome,
    StagedResolution,
    decide,
    layer_resolution,
    measure_errors,
    prepare_operands,
)

__all__ = ["matmul_flow", "matmul_summary", "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ("resolution", "elapsed_s", "bound", "max_abs_error", "max_abs_error_float64")


def _flow_run_name() -> str:
    return report.run_name("matmul", flow_run.parameters.get("run_id"))


@flow(
    name="layered-matmul",
    flow_run_name=_flow_run_name,
    task_runner=dask_task_runner(Settings.from_env(), warm_kernel=True),
    validate_parameters=True,
    **lifecycle.UNPERSISTED,
)
def matmul_flow(
    shape: list[int] | None = None,
    seed: int | None = None,
    operands: list[str] | None = None,
    bits: list[int] | None = None,
    partition: list[int] | None = None,
    ordering: str | None = None,
    deadline: float | None = None,
    tolerance: float | None = None,
    store: str | None = None,
    run_id: str | None = None,
    block_rows: int | None = None,
    kernel: str = "auto",
    device: str | None = None,
) -> dict[str, Any] | State:
    """A layered product ``W @ X`` in successive resolutions, persisted and resumable.

    Parameters
    ----------
    shape, seed : synthetic operands ``(M, K, N)`` of seeded 8-bit integers.
    operands : ``[W path, X path]`` (``.npy`` or zarr) instead.
    bits : magnitude bits per component (partitions chosen from the data).
    partition : an explicit partitioning vector for both operands.
    ordering : "anti-diagonal", "one-per-resolution" or "shells".
    deadline : seconds from the start of this flow run; the run stops when it passes,
        keeping its best resolution, and ends Cancelled.
    tolerance : stop once the guaranteed bound is at most this.
    store : the run store directory.
    run_id : resume this run (or start it under this id).
    block_rows : rows of W per Dask block.
    kernel, device : the product kernel (``"auto"``, ``"numpy"``, ``"torch"``) and device
        (``"cpu"``, ``"cuda"``), resolved on each worker; results do not depend on them.
        ``"auto"`` on the CPU is numpy for products below ``Settings.torch_min_work``
        multiply-adds (see :func:`~layered.request.run_kernel`).

    Returns
    -------
    dict or State
        The run summary (see :func:`matmul_summary`), or a Cancelled state when the
        deadline stopped the run (the summary is in the run's manifest).
    """
    started_at = time.time()
    deadline_at = None if deadline is None else started_at + deadline
    check_limits(deadline, tolerance, block_rows)
    check_kernel(kernel, device)
    settings = Settings.from_env().replace(store=Path(store) if store else None,
                                           block_rows=block_rows)
    runs = RunStore(settings.store)
    run_id = run_id or new_run_id("matmul")
    request = MatmulRequest(
        shape=_tuple(shape), seed=seed, operands=_tuple(operands), bits=_tuple(bits),
        partition=_tuple(partition), ordering=ordering,
    )
    stored = runs.read_manifest(run_id)
    spec = resolve_matmul(request, settings, stored["parameters"] if stored else None)
    if stored is None:
        check_room(spec, settings.store)
    kernel = run_kernel(kernel, device, math.prod(spec.shape), settings)
    # What the UI shows is published off the layering's path (lifecycle.Publisher), and
    # what is left of it at the end overlaps the error measurement and the plots.
    with lifecycle.running(runs, run_id, "matmul", spec.parameters, started_at,
                           deadline_at) as run, lifecycle.Publisher() as ui:
        # The layering's clock starts with the operands' split, which resolution 1 needs
        # (as in layered_matmul, whose first resolution splits them).
        clock = lifecycle.Clock(run.completed_resolutions())
        prepared = _prepare(run, spec, settings, deadline_at, (kernel, device))
        if isinstance(prepared, Stop):
            stop = prepared
        else:
            job, first = prepared
            stop = _layer_resolutions(run, job, tolerance, deadline_at, ui, clock, first)
            if flops_affordable(spec.shape, settings.error_check_limit):
                _measure_errors(run, job, ui)
        return lifecycle.finish(run, runs, stop, plot=report.plot_matmul,
                                summarize=matmul_summary, fields=SUMMARY_FIELDS)


def _tuple(values: list[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


def _layer_resolutions(
    run: Run, job: MatmulJob, tolerance: float | None, deadline_at: float | None,
    ui: lifecycle.Publisher, clock: lifecycle.Clock,
    first: tuple[StagedResolution, Submitted] | None = None,
) -> Stop:
    """The loop of the method: layer, persist, decide, repeat. Returns why it stopped.

    ``first``: resolution 1's staged files and its blocks, submitted by the operand
    preparation."""
    total = job.order.resolutions
    entries = run.completed_resolutions()
    key = report.artifact_key("matmul", run.run_id)
    # The store's commits (an fsync of each array) run off the layering's path, in order
    # on their own thread; leaving the block waits for them.
    with lifecycle.Publisher() as store:
        progress = ui.submit(report.start_progress, key, len(entries), total)
        if entries:
            last = entries[-1]
            stopped = decide(last["resolution"], total, last["bound"], tolerance, None)
            if stopped is not None:  # resumed a run that had nothing left to do
                return Stop(stopped, time.time())
        # Every estimate so far, by its staged file and final name (one of them exists):
        # the last resolution's blocks read the ones before their previous for the errors.
        estimates = [(path, path) for path in
                     (run.array_path(e["files"]["estimate"]) for e in entries)]
        previous = estimates[-1] if estimates else None
        persisted: Future[None] | None = None
        # this resolution's staged files and its blocks, if submitted already
        staged, ahead = first or (_stage(run, job, len(entries) + 1), None)
        for resolution in range(len(entries) + 1, total + 1):
            final = (staged.estimate, run.array_path(_files(resolution)["estimate"]))
            # The next resolution's blocks are submitted with this one's, each behind the
            # block of the same rows: the workers go on while the flow decides.
            following = None if resolution == total else FollowingResolution(
                _stage(run, job, resolution + 1), final,
                tuple(estimates) if resolution + 1 == total else (),
            )
            outcome = lifecycle.run_task(
                layer_resolution, job, resolution, previous, staged, deadline_at, ahead,
                following, tuple(estimates[:-1]) if resolution == total else (),
                what=f"resolution {resolution}", run=run,
            )
            if isinstance(outcome, Stop):
                return outcome
            outcome, ahead = outcome
            # The layering stops when the result arrives (if it stops): persisting follows.
            now = time.time()
            if persisted is not None and persisted.done():
                persisted.result()  # a commit that failed fails the run now
            entry = _entry(outcome, clock.elapsed())
            entries.append(entry)
            estimates.append(final)
            persisted = store.submit(_persist, run, entry, staged)
            if outcome.earlier_errors is not None:  # measured by an exact last resolution
                errors = {e["resolution"]: error for e, error in
                          zip(entries[:-1], outcome.earlier_errors, strict=True)}
                for e in entries[:-1]:
                    e["max_abs_error"] = e["max_abs_error_float64"] = errors[e["resolution"]]
                store.submit(_record_errors, run, errors)
            # The next resolution reads this one from the staged file, or, once the store
            # moved it, from its final name.
            if following is not None:
                previous, staged = following.previous, following.out
            ui.submit(_show, key, [dict(e) for e in entries], total, progress, persisted, entries)
            # The decision is a pure function of these values: the flow takes it at once,
            # and its Prefect task run (the same call, same values) is recorded off the
            # layering's path, before its line.
            decision = (resolution, total, outcome.bound, tolerance, deadline_at, now)
            stopped = decide.fn(*decision)
            ui.submit(decide, *decision)
            ui.submit(report.announce, report.decision_line(resolution, total, stopped))
            if stopped is not None:
                if ahead is not None:  # the next resolution, started on the cluster
                    ahead.cancel()
                return Stop(stopped, now)
    return Stop("completed", time.time())


def _measure_errors(run: Run, job: MatmulJob, ui: lifecycle.Publisher) -> None:
    """Record ``max_abs_error`` (against the one-shot float64 product of the truncated
    operands) and ``max_abs_error_float64`` (against the float64 one-shot ``W @ X`` of the
    operands as given) of the resolutions that lack them, both computed now (after the
    layering, so never on its path) on the cluster, and show them in the UI.

    Where the run reached its final resolution with bound 0 and both products are exact
    (``job.float64_exact``), they equal that resolution's estimate: its blocks measured the
    errors against it as they computed it (:func:`~layered.tasks.matmul_blocks.layer_block`),
    and nothing is left to do here; otherwise (another invocation computed the last
    resolution, say) they are measured against it, without computing the products (at 2048
    x 2048 x 512, 20 ms instead of 126)."""
    completed = run.completed_resolutions()
    entries = [e for e in completed if e.get("max_abs_error") is None]
    if not entries:
        return
    estimates = [run.array_path(e["files"]["estimate"]) for e in entries]
    final = completed[-1]
    exact = (job.float64_exact and final["resolution"] == job.order.resolutions
             and final["bound"] == 0)
    errors = measure_errors(
        job, estimates, run.array_path(final["files"]["estimate"]) if exact else None)
    for name, values in zip(("max_abs_error", "max_abs_error_float64"), errors, strict=True):
        run.record_measures(name, {
            e["resolution"]: error for e, error in zip(entries, values, strict=True)
        })
    ui.submit(report.publish_table, report.artifact_key("matmul", run.run_id),
              run.completed_resolutions(), job.order.resolutions)


def _show(key: str, entries: list[dict[str, Any]], total: int, progress: Future[UUID],
          persisted: Future[None], known: list[dict[str, Any]]) -> None:
    """The latest resolution in the log and the UI (its table row and the progress), once
    it is persisted.

    The UI part is left to the next resolution's call when the flow already has the next
    resolution (``known``, the flow's list): each artifact costs the Prefect server about
    10 ms of CPU, which the workers share on a small machine, and the next table has this
    row too.
    """
    persisted.result()
    report.announce(report.progress_line(entries[-1], total))
    if len(known) > len(entries):
        return
    report.publish_resolution(key, entries, total, progress.result())


def _entry(outcome: ResolutionOutcome, elapsed_s: float) -> dict[str, Any]:
    """The manifest entry of a resolution, naming its arrays' final relative paths (an
    exact last resolution, which measured the errors of those before it, has error 0)."""
    entry = {**dataclasses.asdict(outcome), "elapsed_s": elapsed_s,
             "files": _files(outcome.resolution)}
    if entry.pop("earlier_errors") is not None:
        entry["max_abs_error"] = entry["max_abs_error_float64"] = 0.0
    return entry


def _record_errors(run: Run, errors: Mapping[int, float]) -> None:
    """Record the errors an exact last resolution measured of the resolutions before it."""
    for name in ("max_abs_error", "max_abs_error_float64"):
        run.record_measures(name, errors)


def _files(resolution: int) -> dict[str, str]:
    """A resolution's arrays, by their final paths relative to the run."""
    return {"estimate": f"resolution-{resolution}/estimate.npy",
            "bound": f"resolution-{resolution}/bound.npy"}


def _stage(run: Run, job: MatmulJob, resolution: int) -> StagedResolution:
    """Staged files for a resolution's blocks to fill: its estimate and bound."""
    m, n = job.shape[0], job.shape[2]
    return StagedResolution(run.stage_array(f"estimate-{resolution}", (m, n), "<f8"),
                            run.stage_array(f"bound-{resolution}", (m, n), "<f8"))


def _persist(run: Run, entry: dict[str, Any], staged: StagedResolution) -> None:
    """Commit a resolution's staged arrays under their final names, then list it."""
    files = entry["files"]
    run.commit_arrays({files["estimate"]: staged.estimate, files["bound"]: staged.bound})
    run.record_resolution(entry)


def _prepare(
    run: Run, spec: MatmulSpec, settings: Settings, deadline_at: float | None,
    kernel: tuple[str, str | None] = ("auto", None),
) -> tuple[MatmulJob, tuple[StagedResolution, Submitted] | None] | Stop:
    """Operands on disk, split on the workers (once per run; the flags found recorded),
    with resolution 1's blocks submitted to follow the split: the job, and resolution 1's
    staged files and blocks where submitted."""
    w, x = _operand_sources(run, spec)
    job = MatmulJob(w, x, spec.pw, spec.px, spec.order, block_rows=settings.block_rows,
                    kernel=kernel[0], device=kernel[1], max_abs=spec.max_abs)
    prepared = run.manifest["prepared"]
    first = None
    if "split" not in prepared and "digits" not in prepared:  # "digits": older runs
        staged = _stage(run, job, 1)
        outcome = lifecycle.run_task(
            prepare_operands, job, deadline_at, staged, what="the operand preparation",
            run=run,
        )
        if isinstance(outcome, Stop):
            return outcome
        flags, ahead = outcome
        ended_at = time.time()
        run.record_prepared("split", {"off_grid": list(flags)})
        if deadline_at is not None and ended_at >= deadline_at:  # kept for a resume
            if ahead is not None:
                ahead.cancel()
            return Stop("deadline", ended_at, Cancelled(
                message="deadline passed during the operand preparation; stopped"))
        first = None if ahead is None else (staged, ahead)
    off_w, off_x = run.manifest["prepared"].get("split", prepared.get("digits"))["off_grid"]
    return job.on_grids(off_w, off_x), first


def _operand_sources(run: Run, spec: MatmulSpec) -> tuple[ArraySource, ArraySource]:
    """Operand files; synthetic operands are generated into the run once."""
    if spec.w is not None and spec.x is not None:
        return spec.w, spec.x
    if "operands" not in run.manifest["prepared"]:  # generated to disk, block by block
        m, k, n = spec.shape
        value_bits = spec.request.value_bits or 8
        dtype = synthetic_dtype(value_bits).str
        staged = {"operands/W.npy": run.stage_array("operands-W", (m, k), dtype),
                  "operands/X.npy": run.stage_array("operands-X", (k, n), dtype)}
        write_synthetic_operands(spec.shape, spec.request.seed or 0, value_bits,
                                 staged["operands/W.npy"], staged["operands/X.npy"])
        run.record_prepared("operands", {"files": run.commit_arrays(staged)})
    files = run.manifest["prepared"]["operands"]["files"]
    return (open_operand(run.array_path(files["W"]), "W"),
            open_operand(run.array_path(files["X"]), "X"))


def matmul_summary(manifest: Mapping[str, Any], store: Path | str) -> dict[str, Any]:
    """The run summary: ``run_id, status, stopped_reason, store, resolutions``.

    Each resolution lists ``resolution, elapsed_s, bound`` (the largest guaranteed bound),
    ``max_abs_error`` (against the truncated one-shot product) and
    ``max_abs_error_float64`` (against the float64 one-shot ``W @ X`` of the operands as
    given); None when not measured.
    """
    return {
        "run_id": manifest["run_id"],
        "status": manifest.get("status"),
        "stopped_reason": manifest.get("stopped_reason"),
        "store": str(store),
        "resolutions": [
            {k: entry.get(k) for k in SUMMARY_FIELDS} for entry in manifest["resolutions"]
        ],
    }
