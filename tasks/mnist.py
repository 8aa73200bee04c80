"""Prefect tasks of the mnist and train pipelines: resolutions over chunks, the decision, training.

Each resolution is one Prefect task run in the flow's process that fans the chunks still
holding active samples out as plain Dask tasks, as :mod:`layered.tasks.matmul` does with row blocks.
A chunk reads its state of the previous resolution from the run directory, adds one
resolution (:meth:`~layered.layering.InferencePlan.advance`), freezes samples by the rule
right there (:meth:`~layered.layering.InferencePlan.decide`: the certified rule needs the
chunk's stored pre-activations), and writes its new state and its rows of the batch's
outputs into files the flow staged. The batch-level decision (last resolution, nobody left
active, deadline passed) is :func:`decide`, run in the flow. Deadlines are cooperative as in
matmul: the task stops waiting when the deadline passes, cancels the chunks still queued
and ends as ``Cancelled``.

The arithmetic is :mod:`layered.layering.network`; nothing here computes.

Examples
--------
The flow calls, for resolution ``r`` over the chunks still active::

    outcome = layer_resolution(job, r, chunks, previous, staged, deadline_at)
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from layered.data.mnist import load_mnist, pixels_to_unit
from layered.data.models import TrainedModel, TrainingRecipe, load_model, train_model
from layered.data.operands import file_stamp
from layered.layering import InferencePlan, Network, Partition, plan_inference, predicted_class
from layered.tasks.fanout import Call, deadline_state, fan_out

__all__ = [
    "MnistJob",
    "StagedResolution",
    "ChunkOutcome",
    "ResolutionOutcome",
    "ResolutionScores",
    "layer_resolution",
    "decide",
    "train_network",
    "full_resolution_predictions",
    "score_resolution",
    "STOP_REASONS",
]

STOP_REASONS = ("completed", "decided", "deadline")


@dataclass(frozen=True)
class MnistJob:
    """What every chunk of a layered batch inference needs, as paths and small value objects.

    Attributes
    ----------
    model : str
        The run's model file (``.npz`` of :func:`layered.data.save_model`).
    images : str
        The run's test images, uint8 ``(N, 784)`` ``.npy`` (read by rows).
    rule : str
        Decision rule name.
    input_partition : Partition
    weight_partitions : tuple of Partition
    chunk_size : int
        Samples per Dask block.
    output_shape : tuple of int
        ``(N,)`` (sigmoid) or ``(N, C)`` (softmax).
    """

    model: str
    images: str
    rule: str
    input_partition: Partition
    weight_partitions: tuple[Partition, ...]
    chunk_size: int
    output_shape: tuple[int, ...]

    @property
    def resolutions(self) -> int:
        return self.input_partition.m

    @property
    def n_samples(self) -> int:
        return self.output_shape[0]

    def chunks(self) -> list[tuple[int, int]]:
        """Sample ranges ``(start, stop)`` of the chunks, in order."""
        n, size = self.n_samples, self.chunk_size
        return [(s, min(s + size, n)) for s in range(0, n, size)]


@dataclass(frozen=True)
class StagedResolution:
    """Staged files a resolution's chunks fill: the batch's arrays and each chunk's state.

    ``outputs``, ``logits``, ``active`` and ``frozen_at`` hold every sample (rows of chunks
    that are not refined keep the previous resolution's values); ``states`` maps each chunk
    to refine to the file its new state goes to.
    """

    resolution: int
    outputs: str
    logits: str
    active: str
    frozen_at: str
    states: tuple[tuple[int, str], ...]

    def arrays(self) -> dict[str, str]:
        """The batch's staged arrays by name."""
        return {"outputs": self.outputs, "logits": self.logits, "active": self.active,
                "frozen_at": self.frozen_at}

    def state(self, chunk: int) -> str:
        """The staged state file of ``chunk``."""
        return dict(self.states)[chunk]


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk reports: its samples refined and still active, and the cost."""

    chunk: int
    n_active: int
    active_after: int
    bit_ops: int
    flops: int
    decision_flops: int


@dataclass(frozen=True)
class ResolutionOutcome:
    """What one resolution task returns to the flow (its arrays are in the staged files).

    Attributes
    ----------
    resolution : int
    refined : tuple of int
        The chunks refined (each wrote a state file).
    active_chunks : tuple of int
        The chunks with samples still active after the decision.
    n_active : int
        Samples refined in this resolution.
    bit_ops, flops, decision_flops : int
        Cost of the upgrades and of the rule's bounds, all chunks.
    task_s : float
        Wall time of the fan-out inside the task.
    """

    resolution: int
    refined: tuple[int, ...]
    active_chunks: tuple[int, ...]
    n_active: int
    bit_ops: int
    flops: int
    decision_flops: int
    task_s: float

    @classmethod
    def combine(
        cls, resolution: int, chunks: Sequence[ChunkOutcome], task_s: float
    ) -> ResolutionOutcome:
        """The outcome of a whole resolution from those of its chunks."""
        return cls(
            resolution=resolution,
            refined=tuple(c.chunk for c in chunks),
            active_chunks=tuple(c.chunk for c in chunks if c.active_after),
            n_active=sum(c.n_active for c in chunks),
            bit_ops=sum(c.bit_ops for c in chunks),
            flops=sum(c.flops for c in chunks),
            decision_flops=sum(c.decision_flops for c in chunks),
            task_s=task_s,
        )


# ------------------------------------------------------------------------ resolutions
@functools.lru_cache(maxsize=16)
def _chunk_plan(job: MnistJob, chunk: int, stamps: tuple[tuple[int, int], ...]) -> InferencePlan:
    # Cached per worker process, keyed by the files' sizes and times as well (a run id can
    # be deleted and reused): splitting a chunk's inputs into components is most of its
    # work at one resolution, and every resolution needs the same split.
    rows = job.chunks()[chunk]
    network = Network(**load_model(job.model).to_network_kwargs())
    images = np.load(job.images, mmap_mode="r")[rows[0] : rows[1]]
    # clip: the paper's weight partitions leave a few large weights outside their range
    # (counted by the plan), as `layered report mnist` does.
    return plan_inference(network, pixels_to_unit(np.asarray(images)), job.input_partition,
                          job.weight_partitions, clip=True)


def _layer_chunk(
    job: MnistJob, previous: str | None, out: StagedResolution, chunk: int
) -> ChunkOutcome:
    rows = job.chunks()[chunk]
    plan = _chunk_plan(job, chunk, (file_stamp(job.model), file_stamp(job.images)))
    if previous is None:
        state = plan.start()
    else:
        with np.load(os.path.join(previous, f"chunk-{chunk}.npz")) as saved:
            state = plan.restore(saved)
    upgrade = plan.advance(state)
    decision = plan.decide(upgrade.state, job.rule)
    new = decision.state
    values = {"outputs": new.outputs, "logits": new.logits, "active": new.active,
              "frozen_at": new.frozen_at}
    for name, path in out.arrays().items():
        target = np.load(path, mmap_mode="r+")
        target[rows[0] : rows[1]] = values[name]
        target.flush()
    np.savez(out.state(chunk), **new.to_arrays())
    return ChunkOutcome(chunk, upgrade.n_active, len(new.samples), upgrade.bit_ops, upgrade.flops,
                        decision.decision_flops)


@task(name="mnist-resolution", task_run_name="resolution-{resolution}", cache_policy=NO_CACHE)
def layer_resolution(
    job: MnistJob,
    resolution: int,
    chunks: Sequence[int],
    previous: str | None,
    out: StagedResolution,
    deadline: float | None,
) -> ResolutionOutcome | State:
    """Resolution ``r`` of the batch: refine the active samples of ``chunks``, then freeze.

    Parameters
    ----------
    job : MnistJob
    resolution : int
        1-based resolution.
    chunks : sequence of int
        The chunks that still hold active samples.
    previous : str or None
        Committed directory of resolution ``r - 1`` (its ``chunk-<c>.npz`` states); None
        for the first resolution.
    out : StagedResolution
        Staged files to fill.
    deadline : float or None
        Absolute time (``time.time()``) after which the task stops and ends Cancelled.
    """
    t0 = time.perf_counter()
    outcomes = fan_out(
        [Call(f"resolution-{resolution}-chunk-{c}", _layer_chunk, (job, previous, out, c))
         for c in chunks],
        deadline,
    )
    if outcomes is None:
        return deadline_state(f"resolution {resolution}", deadline or 0.0)
    return ResolutionOutcome.combine(resolution, outcomes, time.perf_counter() - t0)


# --------------------------------------------------------------------------- decision
@task(name="mnist-decide", task_run_name="decide-{resolution}", cache_policy=NO_CACHE)
def decide(
    resolution: int,
    resolutions: int,
    active: int,
    deadline: float | None,
    now: float | None = None,
) -> str | None:
    """Why the batch stops after ``resolution``, or None to go on.

    ``"completed"`` after the last resolution, ``"decided"`` once no sample is left
    active, ``"deadline"`` once the deadline has passed (every sample keeps its output).

    Examples
    --------
    >>> decide.fn(2, 4, active=0, deadline=None)
    'decided'
    >>> decide.fn(2, 4, active=10, deadline=100.0, now=50.0) is None
    True
    """
    if resolution >= resolutions:
        return "completed"
    if active == 0:
        return "decided"
    now = time.time() if now is None else now
    if deadline is not None and now >= deadline:
        return "deadline"
    return None


@dataclass(frozen=True)
class ResolutionScores:
    """How good the batch's answers are after a resolution (frozen samples included)."""

    accuracy: float
    agreement_with_full: float
    active_fraction: float
    active: int


def score_resolution(
    output: str, logits: np.ndarray, active: np.ndarray, targets: np.ndarray,
    full: np.ndarray,
) -> ResolutionScores:
    """Accuracy against ``targets`` and agreement with the ``full``-resolution predictions.

    Examples
    --------
    >>> s = score_resolution("sigmoid", np.array([1.0, -2.0, 0.5]), np.array([0, 1, 0], bool),
    ...                      targets=np.array([1, 1, 1]), full=np.array([1, 0, 0]))
    >>> s.accuracy, s.agreement_with_full, s.active
    (0.6666666666666666, 0.6666666666666666, 1)
    """
    predicted = predicted_class(output, logits)
    return ResolutionScores(
        accuracy=float(np.mean(predicted == targets)),
        agreement_with_full=float(np.mean(predicted == full)),
        active_fraction=float(np.mean(active)),
        active=int(np.count_nonzero(active)),
    )


def full_resolution_predictions(
    network: Network, X: np.ndarray, input_partition: Partition,
    weight_partitions: Sequence[Partition],
) -> np.ndarray:
    """Predicted classes of a one-shot pass of the network truncated to every component.

    What a sample's answer would be had it been refined to the last resolution: inputs,
    weights and biases truncated (and clipped) by their partitions, one float64 pass.
    """
    truncated = Network(
        [p.truncate(w, clip=True) for w, p in zip(network.weights, weight_partitions, strict=True)],
        [p.truncate(b, clip=True) for b, p in zip(network.biases, weight_partitions, strict=True)],
        hidden=network.hidden, output=network.output,
    )
    return predicted_class(network.output, truncated.logits(input_partition.truncate(X, clip=True)))


# ----------------------------------------------------------------------------- train
def _train(
    data_dir: str, task: str, samples: int | None, recipe: TrainingRecipe, seed: int
) -> TrainedModel:
    images, labels = load_mnist(Path(data_dir), "train")
    if samples is not None:
        images, labels = images[:samples], labels[:samples]
    return train_model(images, labels, task=task, recipe=recipe, seed=seed,
                       test=load_mnist(Path(data_dir), "test"), data_source=data_dir)


@task(name="train-model", task_run_name="train-{task}", cache_policy=NO_CACHE)
def train_network(
    data_dir: str, task: str, samples: int | None, recipe: TrainingRecipe, seed: int = 0
) -> TrainedModel:
    """Train a ``task`` model on the training split of ``data_dir``; test it on the test split.

    The training runs as one Dask task on a worker, which reads the data itself (nothing
    large travels through the scheduler) and whose BLAS is pinned to one thread: for these
    small layers that is 3-5 times faster than two threads (measured on 2 cores).

    Parameters
    ----------
    data_dir : str
        An MNIST-format directory.
    task : {"even-odd", "digits"}
    samples : int or None
        Train on the first ``samples`` training images (default all).
    recipe : TrainingRecipe
    seed : int
    """
    trained = fan_out([Call(f"train-{task}", _train, (data_dir, task, samples, recipe, seed))],
                      None)
    assert trained is not None  # (no deadline)
    return cast(TrainedModel, trained[0])
