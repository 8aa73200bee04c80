"""What an mnist or train run computes: the user's request, completed and checked before work.

As :mod:`layered.request` does for matmul: a request leaves out what the user did not
say; :func:`resolve_mnist` fills it from the run being resumed (so ``--run-id ID`` alone
resumes a run), then from the settings, loads the test split, and loads and checks the
model. Everything that can be wrong with the input (a missing data directory, a corrupt
model file, a model or rule that does not fit the task) is reported here, before a server,
a cluster or a task starts. No Prefect import: the CLI calls this first.

A model found nowhere is trained by the run first and saved where ``layered run train``
saves it by default, :func:`default_model_path` (``<store>/models/<task>.npz``).

Examples
--------
>>> DEFAULT_RULES["digits"], TASK_OUTPUTS["even-odd"]
('margin', ('sigmoid', 1))
>>> default_model_path(Path("/data/runs"), "digits")
PosixPath('/data/runs/models/digits.npz')
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layered.data.mnist import even_odd_labels, load_mnist, resolve_data_dir
from layered.data.models import RECIPES, TASKS, TrainedModel, TrainingRecipe, load_model
from layered.layering import Network, Partition, resolve_rule
from layered.reports.mnist import (
    PAPER_INPUT_PARTITION,
    PAPER_WEIGHT_PARTITIONS,
    layer_partitions,
)
from layered.settings import Settings

__all__ = [
    "DEFAULT_RULES",
    "TASK_OUTPUTS",
    "MnistInputError",
    "MnistRequest",
    "MnistSpec",
    "TrainSpec",
    "data_directory",
    "default_model_path",
    "file_sha256",
    "resolve_mnist",
    "resolve_train",
    "task_partitions",
    "task_targets",
]

#: Output function and units a model of each task has.
TASK_OUTPUTS = {"even-odd": ("sigmoid", 1), "digits": ("softmax", 10)}
#: The rule a task runs under when none is given (gray zone needs a sigmoid output).
DEFAULT_RULES = {"even-odd": "gray-zone", "digits": "margin"}


class MnistInputError(ValueError):
    """The data or the model of an mnist or train run is missing or unusable."""


def default_model_path(store: Path, task: str) -> Path:
    """Where ``layered run train`` saves a ``task`` model and ``layered run mnist`` looks."""
    return Path(store) / "models" / f"{task}.npz"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def task_targets(task: str, labels: np.ndarray) -> np.ndarray:
    """The class each label means for ``task``: 1 even / 0 odd, or the digit itself."""
    return even_odd_labels(labels) if task == "even-odd" else np.asarray(labels, dtype=np.uint8)


def task_partitions(task: str, network: Network) -> tuple[Partition, tuple[Partition, ...]]:
    """The partitions of the paper's experiment (METHOD §6), as ``layered report mnist`` uses.

    One pixel bit per resolution (R = 4); the even/odd model's three layers take the paper's
    one-bit weight partitions, any other model one-bit components with ``p_0`` from each
    layer's range.
    """
    if task == "even-odd" and network.n_layers == len(PAPER_WEIGHT_PARTITIONS):
        return PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS
    return PAPER_INPUT_PARTITION, layer_partitions(network, 1, PAPER_INPUT_PARTITION.m)


@dataclass(frozen=True)
class MnistRequest:
    """An mnist run as asked for; None means "as the resumed run had it, else the default".

    Attributes
    ----------
    data_dir : str
        An MNIST-format directory or ``"mnist"`` (see :func:`layered.data.resolve_data_dir`).
    task : {"even-odd", "digits"}
    rule : {"gray-zone", "margin", "certified"}
    model : str
        A model file saved by ``layered run train``.
    samples : int
        Use the first ``samples`` test images.
    chunk_size : int
        Samples per Dask block.
    """

    data_dir: str | None = None
    task: str | None = None
    rule: str | None = None
    model: str | None = None
    samples: int | None = None
    chunk_size: int | None = None


@dataclass(frozen=True, eq=False)
class MnistSpec:
    """A checked mnist run: its test samples, model and manifest parameters.

    ``model_sha256`` is None when no model exists yet: the run trains one first and saves
    it at ``model_path``.
    """

    task: str
    rule: str
    data_dir: Path
    images: np.ndarray
    targets: np.ndarray
    model_path: Path
    model_sha256: str | None
    chunk_size: int
    parameters: dict[str, Any]

    @property
    def trains(self) -> bool:
        return self.model_sha256 is None

    @property
    def work(self) -> int:
        """Multiply-adds of the batch's first layer, at most: samples x inputs x 64 (the
        widest first layer of the models ``layered run train`` makes)."""
        return int(self.images.shape[0]) * int(np.prod(self.images.shape[1:])) * 64


def resolve_mnist(
    request: MnistRequest, settings: Settings, stored: Mapping[str, Any] | None = None
) -> MnistSpec:
    """Complete ``request`` (from ``stored`` run parameters, then ``settings``) and check it.

    Raises
    ------
    MnistInputError
        A missing data directory or split, a missing or corrupt model file, a model that
        does not fit the task, a bad sample count or chunk size.
    ValueError
        An unknown task or rule, or a rule that does not fit the task's output.
    """
    old = dict(stored or {})
    task = _check_task(_given(request.task, old.get("task"), settings.mnist_task))
    rule = _given(request.rule, old.get("rule"), DEFAULT_RULES[task])
    resolve_rule(rule).check(TASK_OUTPUTS[task][0], None)  # e.g. gray zone needs a sigmoid
    chunk_size = _positive("chunk size", _given(request.chunk_size, old.get("chunk_size"),
                                                settings.chunk_size))
    source = _given(request.data_dir, old.get("data_dir"), settings.mnist_data)
    model_path, sha = _model_source(request, old, settings.store, task)
    data_dir = data_directory(source, ("train", "test") if sha is None else ("test",))
    images, labels = _load(data_dir, "test")
    if sha is None:
        _load(data_dir, "train")  # the run will train on it: check it now
    samples = _given(request.samples, old.get("samples"), len(labels))
    if not 1 <= samples <= len(labels):
        raise MnistInputError(
            f"samples must be between 1 and {len(labels)} (the test images in {data_dir}),"
            f" got {samples}"
        )
    parameters = {
        "data_dir": str(data_dir),
        "task": task,
        "rule": rule,
        "samples": samples,
        "chunk_size": chunk_size,
        "model": {"path": str(model_path), "sha256": sha},
    }
    return MnistSpec(task, rule, data_dir, images[:samples], task_targets(task, labels[:samples]),
                     model_path, sha, chunk_size, parameters)


def _model_source(
    request: MnistRequest, old: Mapping[str, Any], store: Path, task: str
) -> tuple[Path, str | None]:
    """The model file and its checksum; None when it must be trained first.

    A resumed run keeps its model (the run holds a copy), so it is not read again.
    """
    if request.model is None and old.get("model"):
        return Path(old["model"]["path"]), old["model"]["sha256"]
    path = Path(request.model) if request.model else default_model_path(store, task)
    path = path.expanduser().resolve()
    if request.model is None and not path.exists():
        return path, None
    check_model(read_model(path), task, path)
    return path, file_sha256(path)


def read_model(path: Path) -> TrainedModel:
    """:func:`layered.data.load_model`, with a missing file as an input error."""
    try:
        return load_model(path)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise MnistInputError(
            f"model file {path} does not exist; train one with `layered run train --out"
            f" {path}` or leave out --model"
        ) from exc


def check_model(model: TrainedModel, task: str, path: Path) -> None:
    """Raise :class:`MnistInputError` unless ``model`` reads MNIST images and fits ``task``."""
    output, units = TASK_OUTPUTS[task]
    sizes = model.layer_sizes
    if sizes[0] != 784 or model.output != output or sizes[-1] != units:
        raise MnistInputError(
            f"model {path} has layer sizes {sizes} and a {model.output} output; task"
            f" {task!r} needs 784 inputs and a {output} output of {units} unit(s)"
        )


def _given(*values: Any) -> Any:
    """The first value that is not None: the request's, the resumed run's, the default."""
    return next(v for v in values if v is not None)


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    return task


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise MnistInputError(f"{name} must be a positive integer, got {value}")
    return int(value)


def data_directory(source: str, splits: tuple[str, ...]) -> Path:
    """The MNIST-format directory ``source`` names, fetched if it is a data set name."""
    try:
        return resolve_data_dir(source, splits=splits).resolve()
    except OSError as exc:  # not found, or a download that failed
        raise MnistInputError(f"MNIST data {source!r}: {exc}") from exc


def _load(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return load_mnist(directory, split)
    except FileNotFoundError as exc:
        raise MnistInputError(str(exc)) from exc


# ------------------------------------------------------------------------------ train
@dataclass(frozen=True)
class TrainSpec:
    """A checked training run: data, task, recipe, where the model goes."""

    data_dir: Path
    task: str
    out: Path
    samples: int | None
    recipe: TrainingRecipe
    parameters: dict[str, Any]


def resolve_train(
    settings: Settings,
    *,
    data_dir: str | None = None,
    task: str | None = None,
    out: str | None = None,
    samples: int | None = None,
    epochs: int | None = None,
) -> TrainSpec:
    """Check a training request; defaults from ``settings``, the recipe from the task.

    Raises
    ------
    MnistInputError
        A missing data directory or split, an output path that is a directory, a bad
        sample or epoch count.
    ValueError
        An unknown task.
    """
    task = _check_task(_given(task, settings.mnist_task))
    directory = data_directory(_given(data_dir, settings.mnist_data), ("train", "test"))
    train_labels = _load(directory, "train")[1]
    _load(directory, "test")
    if samples is not None and not 1 <= samples <= len(train_labels):
        raise MnistInputError(
            f"samples must be between 1 and {len(train_labels)} (the training images in"
            f" {directory}), got {samples}"
        )
    recipe = RECIPES[task]
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=_positive("epochs", epochs))
    path = Path(out).expanduser().resolve() if out else default_model_path(settings.store, task)
    if path.is_dir():
        raise MnistInputError(f"--out {path} is a directory; give the model file's path")
    parameters = {"data_dir": str(directory), "task": task, "out": str(path),
                  "samples": samples, "recipe": dataclasses.asdict(recipe)}
    return TrainSpec(directory, task, path, samples, recipe, parameters)
