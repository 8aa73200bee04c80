"""The matrix-vector jobs of the stream experiment: when they arrive and what they multiply.

A job is ``W @ x`` with ``W`` of ``K`` rows (one row per task of the model) and ``x`` a
column vector. Operands are small integers, so every layered estimate is exact and the
final resolution equals the one-shot product bit for bit:

* :class:`SyntheticJobs`: seeded random integers in the two's complement range of
  ``value_bits`` bits (via :func:`layered.data.operands.synthetic_operands`);
* :class:`ImageJobs`: real data, ``K`` consecutive MNIST images (uint8 pixels, one image
  per row) scored by a seeded integer weight vector, as a quantised linear layer would.

Arrival times are the Poisson arrivals the model draws
(:func:`layered.layering.stream.draw_stream`), so a real run and its simulation share them.

Examples
--------
>>> source = SyntheticJobs(rows=4, cols=3, seed=0)
>>> jobs = stream_jobs([0.5, 2.0], source)
>>> [(j.index, j.arrival, j.matrix.shape, j.vector.shape) for j in jobs]
[(0, 0.5, (4, 3), (3, 1)), (1, 2.0, (4, 3), (3, 1))]
>>> source.partition
Partition(points=(8, 4, 0))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from layered.layering import Partition

from .mnist import load_mnist
from .operands import synthetic_operands

__all__ = ["ImageJobs", "JobSource", "StreamJob", "SyntheticJobs", "stream_jobs"]


@dataclass(frozen=True)
class StreamJob:
    """One job: its index, arrival time (slots) and operands ``matrix @ vector``."""

    index: int
    arrival: float
    matrix: np.ndarray
    vector: np.ndarray


class JobSource(Protocol):
    """Where a job's operands come from."""

    rows: int

    @property
    def partition(self) -> Partition:
        """A partition that covers every value of every job's operands."""
        ...

    def operands(self, job: int) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix (rows, N), vector (N, 1))`` of job ``job``."""
        ...


def _job_seed(seed: int, job: int) -> int:
    """An independent seed per (run seed, job), so job ``j`` never depends on the others."""
    return int(np.random.SeedSequence((seed, job)).generate_state(1)[0])


def _value_partition(value_bits: int) -> Partition:
    """Two components of (nearly) half the bits each, covering ``|a| <= 2**value_bits - 1``."""
    return Partition((value_bits, value_bits // 2, 0))


@dataclass(frozen=True)
class SyntheticJobs:
    """Seeded random integer operands, ``W`` of ``rows x cols`` and ``x`` of ``cols``.

    Parameters
    ----------
    rows, cols : int
    seed : int
    value_bits : int
        Values lie in ``[-2**(value_bits-1), 2**(value_bits-1))``.
    """

    rows: int
    cols: int
    seed: int = 0
    value_bits: int = 8

    @property
    def partition(self) -> Partition:
        return _value_partition(self.value_bits)

    def operands(self, job: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.rows, self.cols, 1)
        return synthetic_operands(shape, _job_seed(self.seed, job), self.value_bits)


@dataclass(frozen=True)
class ImageJobs:
    """``rows`` consecutive images per job (wrapping around) times a seeded weight vector.

    Parameters
    ----------
    images : ndarray of uint8, shape (N_images, features)
    rows : int
        Images per job (``K``).
    seed : int
        Seeds each job's weight vector.
    value_bits : int
        Weights are integers in the two's complement range of this many bits (8: the
        same range as the pixels, so one partition covers both).

    Examples
    --------
    >>> jobs = ImageJobs(np.arange(12, dtype=np.uint8).reshape(3, 4), rows=2)
    >>> jobs.operands(1)[0].tolist()
    [[8, 9, 10, 11], [0, 1, 2, 3]]
    """

    images: np.ndarray
    rows: int
    seed: int = 0
    value_bits: int = 8

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or self.images.dtype != np.uint8 or self.images.shape[0] == 0:
            raise ValueError(
                "images must be a non-empty 2-D uint8 array (one flattened image per row),"
                f" got {self.images.dtype} of shape {self.images.shape}"
            )
        if self.value_bits < 8:
            raise ValueError(
                f"value_bits must be >= 8 to cover uint8 pixels, got {self.value_bits}"
            )

    @classmethod
    def from_mnist(
        cls, directory: str | os.PathLike[str], rows: int, seed: int = 0, split: str = "test"
    ) -> ImageJobs:
        """Jobs over the images of one MNIST split read from ``directory``."""
        images, _ = load_mnist(directory, split)
        return cls(images, rows, seed)

    @property
    def partition(self) -> Partition:
        return _value_partition(self.value_bits)

    def operands(self, job: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.images.shape[0]
        index = (job * self.rows + np.arange(self.rows)) % n
        rng = np.random.default_rng(_job_seed(self.seed, job))
        half = 2 ** (self.value_bits - 1)
        vector = rng.integers(-half, half, size=(self.images.shape[1], 1), dtype=np.int16)
        return self.images[index], vector


def stream_jobs(arrivals: npt.ArrayLike, source: JobSource) -> list[StreamJob]:
    """One :class:`StreamJob` per arrival time, with operands from ``source``."""
    times: Sequence[float] = np.asarray(arrivals, dtype=np.float64).reshape(-1).tolist()
    jobs = []
    for index, arrival in enumerate(times):
        matrix, vector = source.operands(index)
        jobs.append(StreamJob(index, arrival, matrix, vector))
    return jobs
