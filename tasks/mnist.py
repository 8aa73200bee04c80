"""Prefect tasks of the mnist and train pipelines: resolutions over chunks, the decision, training.

Each resolution is one Prefect task run in the flow's process that fans the chunks still
holding active samples out as plain Dask tasks (:mod:`layered.tasks.mnist_chunks`), as
:mod:`layered.tasks.matmul` does with row blocks. The batch-level decision (last
resolution, nobody left active, deadline passed) is :func:`decide`, run in the flow.
Deadlines are cooperative as in matmul: the task stops waiting when the deadline passes,
cancels the chunks still queued and ends as ``Cancelled``.

The arithmetic is :mod:`layered.layering.network`; nothing here computes.

Examples
--------
The flow calls, for resolution ``r`` over the chunks still active::

    outcome = layer_resolution(job, r, chunks, previous, staged, deadline_at)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from layered.data.models import TrainedModel, TrainingRecipe
from layered.layering import Network, Partition, predicted_class
from layered.tasks.fanout import Call, deadline_state, fan_out
from layered.tasks.mnist_chunks import (
    ChunkOutcome,
    MnistJob,
    ResolutionOutcome,
    StagedResolution,
    layer_chunk,
    train,
)

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


# ------------------------------------------------------------------------ resolutions
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
        [Call(f"resolution-{resolution}-chunk-{c}", layer_chunk, (job, previous, out, c))
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
    trained = fan_out([Call(f"train-{task}", train, (data_dir, task, samples, recipe, seed))],
                      None)
    assert trained is not None  # (no deadline)
    return cast(TrainedModel, trained[0])
