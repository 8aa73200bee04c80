"""The work of one chunk of samples of the mnist pipeline, and of a training run, as they
run on a Dask worker.

Imports numpy and the library only (no Prefect, no Dask), so that workers start quickly
and preload it (:mod:`layered.cluster`). The Prefect tasks that fan them out are
:mod:`layered.tasks.mnist`. A chunk reads its state of the previous resolution from the run
directory, adds one resolution (:meth:`~layered.layering.InferencePlan.advance`), freezes
samples by the rule right there (:meth:`~layered.layering.InferencePlan.decide`), and
writes its new state and its rows of the batch's outputs into files the flow staged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layered.data.mnist import load_mnist, pixels_to_unit
from layered.data.models import TrainedModel, TrainingRecipe, load_model, train_model
from layered.data.operands import file_stamp
from layered.data.store import write_rows
from layered.layering import InferencePlan, Network, Partition, plan_inference
from layered.tasks.kernels import worker_kernel

__all__ = [
    "MnistJob",
    "StagedResolution",
    "ChunkOutcome",
    "ResolutionOutcome",
    "layer_chunk",
    "train",
]


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
    kernel, device : str
        Product kernel and device, by name (see :func:`layered.layering.resolve_kernel`),
        resolved on each worker.
    """

    model: str
    images: str
    rule: str
    input_partition: Partition
    weight_partitions: tuple[Partition, ...]
    chunk_size: int
    output_shape: tuple[int, ...]
    kernel: str = "auto"
    device: str | None = None

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


# ----------------------------------------------------------------------------- work
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
                          job.weight_partitions, clip=True,
                          kernel=worker_kernel(job.kernel, job.device))


def layer_chunk(
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
        write_rows(path, rows, values[name])
    np.savez(out.state(chunk), **new.to_arrays())
    return ChunkOutcome(chunk, upgrade.n_active, len(new.samples), upgrade.bit_ops, upgrade.flops,
                        decision.decision_flops)


def train(
    data_dir: str, task: str, samples: int | None, recipe: TrainingRecipe, seed: int
) -> TrainedModel:
    images, labels = load_mnist(Path(data_dir), "train")
    if samples is not None:
        images, labels = images[:samples], labels[:samples]
    return train_model(images, labels, task=task, recipe=recipe, seed=seed,
                       test=load_mnist(Path(data_dir), "test"), data_source=data_dir)
