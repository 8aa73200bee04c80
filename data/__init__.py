"""Data sources and sinks: IDX/MNIST loading and download, trained models.

Examples
--------
>>> from layered.data import load_dataset, pixels_to_unit
>>> images, labels = load_dataset("path/to/mnist", "test")  # doctest: +SKIP
>>> x = pixels_to_unit(images)                               # doctest: +SKIP
"""

from .idx import IdxFormatError, read_idx, write_idx
from .mnist import (
    DATASET_NAMES,
    KNOWN_DIGESTS,
    SPLITS,
    ChecksumMismatchError,
    DownloadError,
    KnownDigest,
    default_cache_dir,
    download_mnist,
    even_odd_labels,
    load_dataset,
    load_mnist,
    pixels_to_unit,
    resolve_data_dir,
)
from .models import (
    RECIPES,
    TASKS,
    ModelFormatError,
    TrainedModel,
    TrainingRecipe,
    export_classifier,
    fit_classifier,
    load_model,
    save_model,
    train_model,
)

__all__ = [
    "DATASET_NAMES",
    "KNOWN_DIGESTS",
    "RECIPES",
    "SPLITS",
    "TASKS",
    "ChecksumMismatchError",
    "DownloadError",
    "IdxFormatError",
    "KnownDigest",
    "ModelFormatError",
    "TrainedModel",
    "TrainingRecipe",
    "default_cache_dir",
    "download_mnist",
    "even_odd_labels",
    "export_classifier",
    "fit_classifier",
    "load_dataset",
    "load_mnist",
    "load_model",
    "pixels_to_unit",
    "read_idx",
    "resolve_data_dir",
    "save_model",
    "train_model",
    "write_idx",
]
