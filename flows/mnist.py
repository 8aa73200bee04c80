"""The layered mnist flow: for each resolution, refine the active samples, decide, persist.

Batch inference of a trained network over the test split, in chunks. Each resolution is
one Prefect task on Dask over the chunks still holding active samples (chunks fanned out
inside it); each chunk adds the resolution's components to its active samples and freezes
those the rule stops (gray zone, margin, certified), keeping their outputs. After each
resolution the flow persists every sample's output, logit, active flag and freezing
resolution and every refined chunk's state to the run directory, shows the resolution in
the UI, and decides whether the batch stops: at the last resolution, once no sample is
active, or once the deadline has passed (every sample keeps its latest output; the run
ends Cancelled). Re-running a run id resumes after its last persisted resolution; a run
stopped by its deadline goes on refining the samples that were still active. Faults end a
run as they end a matmul run (see :mod:`layered.flows.lifecycle`): recorded ``Failed`` in the
manifest with the persisted resolutions kept.

Without a model, the run uses the one ``layered run train`` saved under the store, and
trains that one first when there is none.

Examples
--------
From Python (a LocalCluster is started for the run)::

    from layered.flows.mnist import mnist_flow
    state = mnist_flow(data_dir="../shared/data/mnist", rule="certified", return_state=True)

From the shell: ``layered run mnist --data-dir ../shared/data/mnist --rule certified``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State

from layered.cluster import dask_task_runner
from layered.data.mnist import pixels_to_unit
from layered.data.models import RECIPES, load_model, save_model
from layered.data.store import Run, RunStore, atomic_write_bytes, new_run_id
from layered.flows import lifecycle
from layered.flows.lifecycle import Stop
from layered.layering import Network, Partition
from layered.mnist_request import (
    MnistInputError,
    MnistRequest,
    MnistSpec,
    file_sha256,
    resolve_mnist,
    task_partitions,
)
from layered.request import check_kernel, check_limits, run_kernel
from layered.settings import Settings
from layered.tasks import report
from layered.tasks.mnist import (
    MnistJob,
    ResolutionOutcome,
    StagedResolution,
    decide,
    full_resolution_predictions,
    layer_resolution,
    score_resolution,
    train_network,
)

__all__ = ["mnist_flow", "mnist_summary", "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ("resolution", "elapsed_s", "active_fraction", "accuracy")
MODEL_FILE = "model.npz"


def _flow_run_name() -> str:
    return report.run_name("mnist", flow_run.parameters.get("run_id"))


@flow(
    name="layered-mnist",
    flow_run_name=_flow_run_name,
    task_runner=dask_task_runner(Settings.from_env()),
    validate_parameters=True,
    **lifecycle.UNPERSISTED,
)
def mnist_flow(
    data_dir: str | None = None,
    task: str | None = None,
    rule: str | None = None,
    model: str | None = None,
    deadline: float | None = None,
    samples: int | None = None,
    chunk_size: int | None = None,
    store: str | None = None,
    run_id: str | None = None,
    kernel: str = "auto",
    device: str | None = None,
) -> dict[str, Any] | State:
    """Layered batch inference over the MNIST test split, persisted and resumable.

    Parameters
    ----------
    data_dir : an MNIST-format directory, or "mnist" (downloaded once into the user cache).
    task : "even-odd" (the paper's binary model) or "digits".
    rule : "gray-zone" (default for even-odd), "margin" (default for digits) or "certified".
    model : a model file saved by ``layered run train`` (default: the one under the store,
        trained first if missing).
    deadline : seconds from the start of this flow run; the batch stops when it passes,
        every sample keeping its latest output, and the run ends Cancelled.
    samples : use the first ``samples`` test images (default all).
    chunk_size : samples per Dask block.
    store : the run store directory.
    run_id : resume this run (or start it under this id).
    kernel, device : the product kernel (``"auto"``, ``"numpy"``, ``"torch"``) and device
        (``"cpu"``, ``"cuda"``), resolved on each worker; results do not depend on them.
        ``"auto"`` on the CPU is numpy for batches below ``Settings.torch_min_work``
        multiply-adds (see :func:`~layered.request.run_kernel`).

    Returns
    -------
    dict or State
        The run summary (see :func:`mnist_summary`), or a Cancelled state when the
        deadline stopped the run (the summary is in the run's manifest).
    """
    started_at = time.time()
    deadline_at = None if deadline is None else started_at + deadline
    check_limits(deadline, None, None)
    check_kernel(kernel, device)
    settings = Settings.from_env().replace(store=Path(store) if store else None)
    runs = RunStore(settings.store)
    run_id = run_id or new_run_id("mnist")
    request = MnistRequest(data_dir=data_dir, task=task, rule=rule, model=model,
                           samples=samples, chunk_size=chunk_size)
    stored = runs.read_manifest(run_id)
    spec = resolve_mnist(request, settings, stored["parameters"] if stored else None)
    kernel = run_kernel(kernel, device, spec.work, settings)
    with lifecycle.running(runs, run_id, "mnist", spec.parameters, started_at,
                           deadline_at) as run:
        job = dataclasses.replace(_prepare(run, spec), kernel=kernel, device=device)
        stop = _layer_resolutions(run, job, deadline_at)
        return lifecycle.finish(run, runs, stop, plot=report.plot_mnist,
                                summarize=mnist_summary, fields=SUMMARY_FIELDS)


def _layer_resolutions(run: Run, job: MnistJob, deadline_at: float | None) -> Stop:
    """The loop of the method: refine, persist, decide, repeat. Returns why it stopped."""
    total = job.resolutions
    entries = run.completed_resolutions()
    key = report.artifact_key("mnist", run.run_id)
    clock = lifecycle.Clock(entries)
    inputs = run.manifest["prepared"]["inputs"]
    targets = np.load(run.array_path(inputs["targets"]))
    full = np.load(run.array_path(inputs["full_predictions"]))
    with lifecycle.Publisher() as ui:
        progress = ui.submit(report.start_progress, key, len(entries), total)
        if entries:
            last = entries[-1]
            stopped = decide(last["resolution"], total, last["active"], None)
            if stopped is not None:  # resumed a run that had nothing left to do
                return Stop(stopped, time.time())
        for resolution in range(len(entries) + 1, total + 1):
            previous = entries[-1] if entries else None
            chunks = previous["active_chunks"] if previous else list(range(len(job.chunks())))
            staged = _stage(run, job, resolution, previous, chunks)
            outcome = lifecycle.run_task(
                layer_resolution, job, resolution, chunks,
                run.array_path(f"resolution-{resolution - 1}") if previous else None,
                staged, deadline_at,
                what=f"resolution {resolution}", run=run,
            )
            if isinstance(outcome, Stop):
                return outcome
            # The layering stops when the result arrives (if it stops): persisting follows.
            now = time.time()
            entries.append(_persist(run, job, outcome, staged, (targets, full),
                                    clock.elapsed()))
            ui.submit(_show, key, list(entries), total, progress)
            stopped = decide(resolution, total, entries[-1]["active"], deadline_at, now)
            ui.submit(report.announce, report.decision_line(resolution, total, stopped))
            if stopped is not None:
                return Stop(stopped, now)
    return Stop("completed", time.time())


def _show(key: str, entries: list[dict[str, Any]], total: int, progress: Future[UUID]) -> None:
    """The latest resolution in the log and the UI (its table row and the progress)."""
    report.announce(report.progress_line(entries[-1], total, measures=report.MNIST_MEASURES))
    report.publish_resolution(key, entries, total, progress.result(),
                              fields=report.MNIST_ROW_FIELDS,
                              what="accuracy and fraction of samples still active")


def _stage(
    run: Run, job: MnistJob, resolution: int, previous: Mapping[str, Any] | None,
    chunks: list[int],
) -> StagedResolution:
    """The batch's arrays for ``resolution``: copies of the previous ones (rows of chunks
    not refined carry over), or new files at the first resolution; a state file per chunk."""
    n = job.n_samples
    layouts = {"outputs": (job.output_shape, "<f8"), "logits": (job.output_shape, "<f8"),
               "active": ((n,), "|b1"), "frozen_at": ((n,), "<i8")}
    paths = {
        name: (run.stage_copy(previous["files"][name], f"{name}-{resolution}") if previous
               else run.stage_array(f"{name}-{resolution}", shape, dtype))
        for name, (shape, dtype) in layouts.items()
    }
    states = tuple((c, run.stage_file(f"chunk-{c}-{resolution}", ".npz")) for c in chunks)
    return StagedResolution(resolution=resolution, states=states, **paths)


def _persist(
    run: Run, job: MnistJob, outcome: ResolutionOutcome, staged: StagedResolution,
    references: tuple[np.ndarray, np.ndarray], elapsed_s: float,
) -> dict[str, Any]:
    r = outcome.resolution
    scores = score_resolution(
        _output(job), np.load(staged.logits), np.load(staged.active), *references
    )
    files = run.commit_arrays({
        **{f"resolution-{r}/{name}.npy": path for name, path in staged.arrays().items()},
        **{f"resolution-{r}/chunk-{c}.npz": staged.state(c) for c in outcome.refined},
    })
    entry = {
        "resolution": r,
        "elapsed_s": elapsed_s,
        "active_fraction": scores.active_fraction,
        "accuracy": scores.accuracy,
        "agreement_with_full": scores.agreement_with_full,
        "active": scores.active,
        "refined": outcome.n_active,
        "bit_ops": outcome.bit_ops,
        "flops": outcome.flops,
        "decision_flops": outcome.decision_flops,
        "task_s": outcome.task_s,
        "active_chunks": list(outcome.active_chunks),
        "files": files,
    }
    run.record_resolution(entry)
    return entry


def _output(job: MnistJob) -> str:
    return "sigmoid" if len(job.output_shape) == 1 else "softmax"


# ----------------------------------------------------------------------------- prepare
def _prepare(run: Run, spec: MnistSpec) -> MnistJob:
    """The run's inputs, model, partitions and full-resolution predictions (once per run)."""
    prepared = run.manifest["prepared"]
    if "model" not in prepared:
        _copy_model(run, spec)
    network = Network(**load_model(run.array_path(MODEL_FILE)).to_network_kwargs())
    if "inputs" not in prepared:
        px, pws = task_partitions(spec.task, network)
        full = full_resolution_predictions(network, pixels_to_unit(spec.images), px, pws)
        run.record_prepared("inputs", {
            "images": run.save_array("inputs/images.npy", spec.images),
            "targets": run.save_array("inputs/targets.npy", spec.targets),
            "full_predictions": run.save_array("inputs/full_predictions.npy", full),
            "input_partition": list(px.points),
            "weight_partitions": [list(p.points) for p in pws],
        })
    inputs = run.manifest["prepared"]["inputs"]
    n, classes = len(spec.targets), network.layer_sizes[-1]
    return MnistJob(
        model=run.array_path(MODEL_FILE),
        images=run.array_path(inputs["images"]),
        rule=spec.rule,
        input_partition=Partition(inputs["input_partition"]),
        weight_partitions=tuple(Partition(p) for p in inputs["weight_partitions"]),
        chunk_size=spec.chunk_size,
        output_shape=(n,) if network.output == "sigmoid" else (n, classes),
    )


def _copy_model(run: Run, spec: MnistSpec) -> None:
    """Copy the model into the run (training it first, and saving it for later runs,
    when there is none), so that a resumed run uses the very same weights."""
    if spec.trains and not spec.model_path.exists():  # (a crashed run may have saved it)
        report.announce(f"no model at {spec.model_path}: training one ({spec.task}) first")
        trained = train_network.submit(str(spec.data_dir), spec.task, None,
                                       RECIPES[spec.task]).result()
        spec.model_path.parent.mkdir(parents=True, exist_ok=True)
        save_model(trained, spec.model_path)
        report.announce(f"trained in {trained.metadata['training_seconds']:.1f} s (test"
                        f" accuracy {trained.metadata['test_accuracy']:.4f}); saved to"
                        f" {spec.model_path}")
    data = spec.model_path.read_bytes()
    atomic_write_bytes(run.path / MODEL_FILE, data)
    sha = file_sha256(run.path / MODEL_FILE)
    if not spec.trains and sha != spec.model_sha256:
        raise MnistInputError(
            f"model {spec.model_path} changed since this run was started (sha256"
            f" {spec.model_sha256}, now {sha}); resume with the original model or use"
            " another --run-id"
        )
    run.record_prepared("model", {"file": MODEL_FILE, "source": str(spec.model_path),
                                  "sha256": sha, "trained_for_run": spec.trains})


def mnist_summary(manifest: Mapping[str, Any], store: Path | str) -> dict[str, Any]:
    """The run summary: ``run_id, status, store, resolutions, final``.

    Each resolution lists ``resolution, elapsed_s, active_fraction, accuracy``; ``final``
    holds the accuracy of the answers the run ended with (frozen samples keep theirs) and
    their agreement with the full-resolution predictions of every sample (None before
    the first resolution).
    """
    entries = manifest["resolutions"]
    last = entries[-1] if entries else {}
    return {
        "run_id": manifest["run_id"],
        "status": manifest.get("status"),
        "store": str(store),
        "resolutions": [{k: entry.get(k) for k in SUMMARY_FIELDS} for entry in entries],
        "final": {k: last.get(k) for k in ("accuracy", "agreement_with_full")},
    }
