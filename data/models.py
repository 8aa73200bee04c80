"""Trained MNIST models as plain numpy weights: training with scikit-learn, save and load.

Two tasks:

- ``"even-odd"``: the paper's binary model (METHOD §6), 784 → 20 → 20 → 1, ReLU hidden,
  sigmoid output giving P(even digit);
- ``"digits"``: a 10-class model (ours), 784 → 64 → 10, ReLU hidden, softmax output.
  One hidden layer of 64 is small enough for fast layered inference and reaches about 97%
  test accuracy on the shared training split.

Both train on ``pixels_to_unit(images)`` (uint8/256) with scikit-learn's
``MLPClassifier`` and plain SGD. The exported :class:`TrainedModel` holds layer ``l``'s
weights with shape ``(out, in)`` (scikit-learn's ``coefs_`` are ``(in, out)``), so
``a_{l+1} = act(W_l @ a_l + b_l)``; :meth:`TrainedModel.to_network_kwargs` gives the
arguments of ``layered.layering.Network``. A model is saved as one ``.npz`` holding the
arrays ``W0, b0, W1, b1, ...`` and a JSON metadata string.

Examples
--------
>>> import numpy as np, tempfile
>>> from pathlib import Path
>>> rng = np.random.default_rng(0)
>>> images = rng.integers(0, 256, size=(200, 784), dtype=np.uint8)
>>> labels = rng.integers(0, 10, size=200, dtype=np.uint8)
>>> recipe = TrainingRecipe(hidden_sizes=(8,), learning_rate=0.01, epochs=2)
>>> model = train_model(images, labels, task="digits", recipe=recipe)
>>> [w.shape for w in model.weights], model.output
([(8, 784), (10, 8)], 'softmax')
>>> path = Path(tempfile.mkdtemp()) / "digits.npz"
>>> save_model(model, path)
>>> load_model(path).metadata["task"]
'digits'
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .mnist import even_odd_labels, pixels_to_unit

if TYPE_CHECKING:
    # scikit-learn is imported only where a model is trained: importing it takes seconds,
    # and most users of layered.data only load data and saved models.
    from sklearn.neural_network import MLPClassifier

__all__ = [
    "OUTPUTS",
    "RECIPES",
    "TASKS",
    "ModelFormatError",
    "TrainedModel",
    "TrainingRecipe",
    "export_classifier",
    "fit_classifier",
    "load_model",
    "save_model",
    "train_model",
]

TASKS = ("even-odd", "digits")
OUTPUTS = ("sigmoid", "softmax")
_FORMAT_VERSION = 1
_METADATA_KEY = "metadata_json"
# scikit-learn's name for each output activation, in the Network's vocabulary.
_SKLEARN_OUTPUTS = {"logistic": "sigmoid", "softmax": "softmax"}


class ModelFormatError(ValueError):
    """Model arrays or a model file are malformed: missing pieces, shapes, metadata."""


@dataclass(frozen=True)
class TrainingRecipe:
    """How a model is trained: architecture and plain-SGD settings.

    Attributes
    ----------
    hidden_sizes : tuple of int
        Width of each ReLU hidden layer.
    learning_rate : float
        SGD step on the *mean* loss of a batch. The paper's step 1e-4 on the *summed*
        loss of 100 samples is the same step as 1e-2 here.
    momentum : float
        Classical (not Nesterov) momentum.
    epochs : int
        Passes over the training set (a fixed count: early stopping is off).
    batch_size : int
    l2 : float
        L2 penalty (scikit-learn's ``alpha``); the paper used none.
    """

    hidden_sizes: tuple[int, ...]
    learning_rate: float
    momentum: float = 0.8
    epochs: int = 10
    batch_size: int = 100
    l2: float = 0.0


#: Default recipe per task. ``even-odd`` is the paper's (METHOD §6); ``digits`` keeps its
#: optimiser with a larger step and more epochs, which a 10-class softmax needs.
RECIPES: dict[str, TrainingRecipe] = {
    "even-odd": TrainingRecipe(hidden_sizes=(20, 20), learning_rate=1e-2, epochs=10),
    "digits": TrainingRecipe(hidden_sizes=(64,), learning_rate=5e-2, epochs=30),
}


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A feed-forward network as plain arrays, with the record of how it was made.

    Attributes
    ----------
    weights : tuple of ndarray
        ``weights[l]`` has shape ``(out, in)``: ``a_{l+1} = act(weights[l] @ a_l + biases[l])``.
        Stored as read-only float64 copies.
    biases : tuple of ndarray
        ``biases[l]`` has shape ``(out,)``, read-only float64.
    hidden : str
        Activation of every hidden layer (``"relu"`` for models trained here).
    output : {"sigmoid", "softmax"}
        Output activation; a sigmoid model has one output unit, P(class 1).
    metadata : mapping
        JSON-compatible record: task, hidden sizes, accuracies, versions, seed, date, data
        source, training recipe.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    hidden: str
    output: str
    metadata: Mapping[str, Any]

    def __post_init__(self) -> None:
        where = "TrainedModel"
        object.__setattr__(self, "weights", _frozen_arrays(self.weights, "weights", where))
        object.__setattr__(self, "biases", _frozen_arrays(self.biases, "biases", where))
        _check_layers(self.weights, self.biases, self.output, where)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Input width followed by each layer's width, e.g. ``(784, 20, 20, 1)``."""
        return (self.weights[0].shape[1], *(w.shape[0] for w in self.weights))

    def to_network_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``layered.layering.Network``.

        Examples
        --------
        >>> m = TrainedModel((np.ones((1, 3)),), (np.zeros(1),), "relu", "sigmoid", {})
        >>> sorted(m.to_network_kwargs())
        ['biases', 'hidden', 'output', 'weights']
        """
        return {
            "weights": list(self.weights),
            "biases": list(self.biases),
            "hidden": self.hidden,
            "output": self.output,
        }


# ---------------------------------------------------------------------------- training
def fit_classifier(
    inputs: np.ndarray, targets: np.ndarray, recipe: TrainingRecipe, *, seed: int = 0
) -> MLPClassifier:
    """Fit a ReLU ``MLPClassifier`` by plain SGD for exactly ``recipe.epochs`` epochs.

    Parameters
    ----------
    inputs : ndarray, shape (N, features)
        Float inputs (for MNIST, ``pixels_to_unit(images)``).
    targets : ndarray, shape (N,)
        Class labels; two classes give a single logistic output unit.
    recipe : TrainingRecipe
    seed : int
        Seeds weight initialisation and batch shuffling.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(
        hidden_layer_sizes=recipe.hidden_sizes,
        activation="relu",
        solver="sgd",
        learning_rate_init=recipe.learning_rate,
        momentum=recipe.momentum,
        nesterovs_momentum=False,
        batch_size=recipe.batch_size,
        max_iter=recipe.epochs,
        alpha=recipe.l2,
        early_stopping=False,
        random_state=seed,
    )
    # The epoch count is the recipe, not a convergence criterion, so stopping at it is
    # expected rather than a warning sign.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(inputs, targets)
    return classifier


def export_classifier(
    classifier: MLPClassifier, metadata: Mapping[str, Any] | None = None
) -> TrainedModel:
    """Export a fitted ReLU ``MLPClassifier`` to plain ``(out, in)`` weights.

    Raises
    ------
    ValueError
        If the classifier's hidden activation is not ReLU or its output activation is not
        logistic or softmax.
    """
    if classifier.activation != "relu":
        raise ValueError(f"only ReLU hidden layers are exported, got {classifier.activation!r}")
    if classifier.out_activation_ not in _SKLEARN_OUTPUTS:
        raise ValueError(
            f"output activation {classifier.out_activation_!r} is not one of"
            f" {sorted(_SKLEARN_OUTPUTS)}"
        )
    return TrainedModel(
        weights=tuple(np.ascontiguousarray(c.T, dtype=np.float64) for c in classifier.coefs_),
        biases=tuple(np.asarray(b, dtype=np.float64).copy() for b in classifier.intercepts_),
        hidden="relu",
        output=_SKLEARN_OUTPUTS[classifier.out_activation_],
        metadata=dict(metadata or {}),
    )


def train_model(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    task: str = "even-odd",
    recipe: TrainingRecipe | None = None,
    seed: int = 0,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    data_source: str = "",
) -> TrainedModel:
    """Train a model for ``task`` on MNIST-format data and export it with metadata.

    Parameters
    ----------
    images : ndarray of uint8, shape (N, 784)
    labels : ndarray, shape (N,)
        Digit labels 0..9 (``"even-odd"`` maps them with ``even_odd_labels``).
    task : {"even-odd", "digits"}
    recipe : TrainingRecipe, optional
        Default ``RECIPES[task]``.
    seed : int
    test : (images, labels), optional
        Evaluated after training; its accuracy goes into the metadata.
    data_source : str
        Where the training data came from (a directory or a data set name), recorded.

    Returns
    -------
    TrainedModel
        ``metadata`` holds task, hidden sizes, activations, train (and test) accuracy,
        training time, versions, seed, date, data source and the recipe.
    """
    import sklearn

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    recipe = RECIPES[task] if recipe is None else recipe
    inputs, targets = _task_data(images, labels, task)
    started = time.perf_counter()
    classifier = fit_classifier(inputs, targets, recipe, seed=seed)
    training_s = time.perf_counter() - started
    metadata: dict[str, Any] = {
        "task": task,
        "hidden_sizes": list(recipe.hidden_sizes),
        "classes": [int(c) for c in classifier.classes_],
        "input_scaling": "uint8 pixels / 256",
        "train_samples": int(len(targets)),
        "train_accuracy": float(classifier.score(inputs, targets)),
        "test_accuracy": None,
        "training_seconds": round(training_s, 3),
        "recipe": asdict(recipe),
        "seed": seed,
        "data_source": data_source,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if test is not None:
        metadata["test_accuracy"] = float(classifier.score(*_task_data(*test, task)))
    return export_classifier(classifier, metadata)


def _task_data(images: np.ndarray, labels: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    targets = even_odd_labels(labels) if task == "even-odd" else np.asarray(labels)
    return pixels_to_unit(images), targets


# ---------------------------------------------------------------------------- files
def save_model(model: TrainedModel, path: str | os.PathLike[str]) -> None:
    """Save a model as one ``.npz`` (arrays ``W0, b0, ...`` plus JSON metadata), atomically.

    The file is written to a temporary name in the same directory and renamed into place,
    so readers see either the old file or the complete new one.

    Raises
    ------
    TypeError
        If the metadata is not JSON-serialisable.
    """
    path = Path(path)
    header = {
        "format_version": _FORMAT_VERSION,
        "layers": len(model.weights),
        "hidden": model.hidden,
        "output": model.output,
        "metadata": dict(model.metadata),
    }
    arrays = {_METADATA_KEY: np.array(json.dumps(header))}
    for index, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        arrays[f"W{index}"] = w
        arrays[f"b{index}"] = b
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, allow_pickle=False, **arrays)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def load_model(path: str | os.PathLike[str]) -> TrainedModel:
    """Load a model saved by :func:`save_model`, validating keys and shapes.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ModelFormatError
        If it is not an ``.npz`` archive, its metadata is missing or not valid JSON, its
        format version is unknown, arrays are missing or extra, or shapes do not chain
        (the message names the file and what was wrong).
    """
    path = Path(path)
    arrays = _read_arrays(path)
    header = _read_header(arrays, path)
    layers = header["layers"]
    expected = {_METADATA_KEY} | {f"{k}{i}" for i in range(layers) for k in "Wb"}
    if set(arrays) != expected:
        raise ModelFormatError(
            f"{path}: expected arrays {sorted(expected)}, found {sorted(arrays)}"
        )
    weights = _frozen_arrays([arrays[f"W{i}"] for i in range(layers)], "weights", str(path))
    biases = _frozen_arrays([arrays[f"b{i}"] for i in range(layers)], "biases", str(path))
    _check_layers(weights, biases, header["output"], str(path))
    return TrainedModel(weights, biases, header["hidden"], header["output"], header["metadata"])


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ModelFormatError(f"{path}: not a readable .npz model file ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFormatError(f"{path}: holds a single array, not an .npz model archive")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, ValueError, EOFError, zlib.error) as exc:
            raise ModelFormatError(f"{path}: corrupt .npz member ({exc})") from exc


def _read_header(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, Any]:
    if _METADATA_KEY not in arrays:
        raise ModelFormatError(f"{path}: no {_METADATA_KEY!r} entry; not a layered model file")
    try:
        header = json.loads(str(arrays[_METADATA_KEY]))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: metadata is not valid JSON ({exc})") from exc
    version = header.get("format_version") if isinstance(header, dict) else None
    if version != _FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: unknown model format (format_version {version!r}, expected {_FORMAT_VERSION})"
        )
    layers = header.get("layers")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ModelFormatError(f"{path}: 'layers' must be a positive integer, got {layers!r}")
    if not isinstance(header.get("hidden"), str) or not isinstance(header.get("metadata"), dict):
        raise ModelFormatError(f"{path}: metadata needs a 'hidden' string and a 'metadata' object")
    return header


def _frozen_arrays(arrays: Sequence[Any], name: str, where: str) -> tuple[np.ndarray, ...]:
    frozen = []
    for index, a in enumerate(arrays):
        try:
            copy = np.array(a, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{where}: {name}[{index}] is not numeric ({exc})") from exc
        copy.flags.writeable = False
        frozen.append(copy)
    return tuple(frozen)


def _check_layers(
    weights: tuple[np.ndarray, ...], biases: tuple[np.ndarray, ...], output: str, where: str
) -> None:
    if output not in OUTPUTS:
        raise ModelFormatError(f"{where}: output must be one of {OUTPUTS}, got {output!r}")
    if not weights or len(weights) != len(biases):
        raise ModelFormatError(
            f"{where}: need one bias per weight matrix and at least one layer, got"
            f" {len(weights)} weights and {len(biases)} biases"
        )
    width = weights[0].shape[-1]
    for index, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[1] != width:
            raise ModelFormatError(
                f"{where}: layer {index} shapes do not chain: need W (out, {width}) and b"
                f" (out,), got W {w.shape}, b {b.shape}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ModelFormatError(f"{where}: layer {index} has non-finite weights or biases")
        width = w.shape[0]
    if (output == "sigmoid" and width != 1) or (output == "softmax" and width < 2):
        raise ModelFormatError(
            f"{where}: a {output} output layer cannot have {width} units (sigmoid needs 1,"
            " softmax at least 2)"
        )
