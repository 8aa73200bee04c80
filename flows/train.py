"""The train flow: train the model the mnist flow uses, save it atomically with its metadata.

One task, :func:`layered.tasks.mnist.train_network`, runs the training as a Dask task on a
worker: the worker reads the
training split itself (nothing large goes through the scheduler), and its BLAS is pinned to
one thread, which for these small layers trains 3-5 times faster than two threads (even/odd
about 9 s instead of 27 s, digits 24 s instead of 122 s, measured on 2 cores); with
``--address`` the training runs on that cluster. The model is saved by the flow, atomically
(``save_model``), and the run is recorded in the store like any other (Running, then
Completed or Failed, see :mod:`layered.flows.lifecycle`): re-running its run id finds the
saved model (same checksum) and trains nothing.

Examples
--------
From Python (a LocalCluster is started for the run)::

    from layered.flows.train import train_flow
    summary = train_flow(data_dir="../shared/data/mnist", task="digits")

From the shell: ``layered run train --data-dir ../shared/data/mnist --task digits``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from layered.cluster import dask_task_runner
from layered.data.models import load_model, save_model
from layered.data.store import RunStore, new_run_id
from layered.flows import lifecycle
from layered.mnist_request import file_sha256, resolve_train
from layered.settings import Settings
from layered.tasks import report
from layered.tasks.mnist import train_network

__all__ = ["train_flow", "train_summary"]


def _flow_run_name() -> str:
    return report.run_name("train", flow_run.parameters.get("run_id"))


@flow(
    name="layered-train",
    flow_run_name=_flow_run_name,
    task_runner=dask_task_runner(Settings.from_env()),
    validate_parameters=True,
    **lifecycle.UNPERSISTED,
)
def train_flow(
    data_dir: str | None = None,
    task: str | None = None,
    out: str | None = None,
    samples: int | None = None,
    epochs: int | None = None,
    store: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Train a ``task`` model on the MNIST training split and save it to ``out``.

    Parameters
    ----------
    data_dir : an MNIST-format directory, or "mnist" (downloaded once into the user cache).
    task : "even-odd" (the paper's 784-20-20-1 model) or "digits" (784-64-10).
    out : where the model goes (default ``<store>/models/<task>.npz``, where the mnist
        flow looks for it).
    samples : train on the first ``samples`` training images (default all).
    epochs : passes over them (default the task's recipe).
    store : the run store directory (the training run is recorded there).
    run_id : a run id; re-running a completed one trains nothing.

    Returns
    -------
    dict
        See :func:`train_summary`.
    """
    settings = Settings.from_env().replace(store=Path(store) if store else None)
    spec = resolve_train(settings, data_dir=data_dir, task=task, out=out, samples=samples,
                         epochs=epochs)
    runs = RunStore(settings.store)
    run_id = run_id or new_run_id("train")
    with lifecycle.running(runs, run_id, "train", spec.parameters, time.time()) as run:
        saved = run.manifest["prepared"].get("model")
        if saved is None or not _is_saved(spec.out, saved["sha256"]):
            model = train_network.submit(str(spec.data_dir), spec.task, spec.samples,
                                         spec.recipe).result()
            spec.out.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, spec.out)
            run.record_prepared("model", {"path": str(spec.out),
                                          "sha256": file_sha256(spec.out)})
        run.record_outcome(status="Completed", stopped_reason="completed",
                           stopped_at=time.time(), finished_at=time.time())
        summary = train_summary(run.manifest, load_model(spec.out).metadata)
    report.publish_training(report.artifact_key("train", run_id), summary)
    report.announce(f"saved {spec.task} model to {spec.out} (test accuracy"
                    f" {summary['test_accuracy']:.4f}, trained in"
                    f" {summary['training_seconds']:.1f} s)")
    return summary


def _is_saved(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def train_summary(manifest: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``run_id, status, task, path, test_accuracy, train_accuracy, training_seconds,
    train_samples`` of a training run (``metadata``: the saved model's)."""
    return {
        "run_id": manifest["run_id"],
        "status": manifest.get("status"),
        "task": manifest["parameters"]["task"],
        "path": manifest["prepared"].get("model", {}).get("path"),
        "test_accuracy": metadata.get("test_accuracy"),
        "train_accuracy": metadata.get("train_accuracy"),
        "training_seconds": metadata.get("training_seconds"),
        "train_samples": metadata.get("train_samples"),
    }
