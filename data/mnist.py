"""MNIST-format data sets: loading, verified download into a user cache, and named sources.

Three sources give the same four IDX files (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]``):

- a directory the user names;
- ``"mnist"``: the official MNIST files, downloaded once into a user cache
  (:func:`download_mnist`) and verified against known checksums;
- ``"fashion-mnist"``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.

:func:`load_dataset` accepts any of them; :func:`load_mnist` reads one directory.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> from layered.data.idx import write_idx
>>> d = Path(tempfile.mkdtemp())
>>> write_idx(d / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), dtype=np.uint8))
>>> write_idx(d / "t10k-labels-idx1-ubyte", np.array([4, 1, 8], dtype=np.uint8))
>>> images, labels = load_dataset(d, "test")
>>> images.shape, labels.tolist(), even_odd_labels(labels).tolist()
((3, 784), [4, 1, 8], [1, 0, 1])
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .idx import read_idx

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_MIRRORS",
    "FASHION_MNIST_DIR",
    "KNOWN_DIGESTS",
    "SPLITS",
    "ChecksumMismatchError",
    "DownloadError",
    "KnownDigest",
    "default_cache_dir",
    "download_mnist",
    "even_odd_labels",
    "load_dataset",
    "load_mnist",
    "pixels_to_unit",
    "resolve_data_dir",
]

SPLITS = ("train", "test")
DATASET_NAMES = ("mnist", "fashion-mnist")

#: Base names of the image and label files of each split (``.gz`` optional on disk).
_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Where Debian's ``dataset-fashion-mnist`` package installs its files (``dpkg -L``).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Mirrors of the official gzipped MNIST files, tried in order (the list torchvision uses,
#: plus Google's CVDF copy). ``LAYERED_MNIST_MIRRORS`` (whitespace-separated) overrides it.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_DOWNLOAD_TIMEOUT_S = 30.0
_HASH_CHUNK_BYTES = 1 << 20


class DownloadError(OSError):
    """No mirror delivered a file (connection refused, timeout, HTTP error)."""


class ChecksumMismatchError(ValueError):
    """A downloaded file matches none of the checksums known for its name."""


@dataclass(frozen=True)
class KnownDigest:
    """One accepted checksum of a data file.

    Attributes
    ----------
    algorithm : str
        A :mod:`hashlib` name, ``"md5"`` or ``"sha256"``.
    hexdigest : str
        The expected digest, lower-case hex.
    origin : str
        Which file this digest identifies, for error messages.
    """

    algorithm: str
    hexdigest: str
    origin: str


_OFFICIAL = "official MNIST file"
_PREFIX = "shared 24,345-image training prefix"

#: Accepted checksums per file name. The official md5s identify the published files. The
#: training pair also accepts the sha256s of the 24,345-image prefix this project's CI data
#: holds (the first 24,345 official images and labels, header count set to 24,345), so a
#: mirror serving that prefix, such as a loopback test server, verifies too. Any one match
#: is enough; a file matching none is rejected.
KNOWN_DIGESTS: dict[str, tuple[KnownDigest, ...]] = {
    "train-images-idx3-ubyte.gz": (
        KnownDigest("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873", _OFFICIAL),
        KnownDigest(
            "sha256", "37c6828b0d6ff21b672a1e640333b90c82f0b7be46154790a9c9427a282b24a7", _PREFIX
        ),
    ),
    "train-labels-idx1-ubyte.gz": (
        KnownDigest("md5", "d53e105ee54ea40749a09fcbcd1e9432", _OFFICIAL),
        KnownDigest(
            "sha256", "395dc3abb8de524376095d61c1ca3a2890cacee73f0f4e6db6303db5d8b9a5ed", _PREFIX
        ),
    ),
    "t10k-images-idx3-ubyte.gz": (
        KnownDigest("md5", "9fb629c4189551a2d022fa330f9573f3", _OFFICIAL),
    ),
    "t10k-labels-idx1-ubyte.gz": (
        KnownDigest("md5", "ec29112dd5afa0611ce80d1b7f02629c", _OFFICIAL),
    ),
}


# ---------------------------------------------------------------------------- loading
def load_mnist(
    directory: str | os.PathLike[str], split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of an MNIST-format data set from a directory.

    Parameters
    ----------
    directory : path-like
        Holds ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``
        (split ``"train"``) or the ``t10k-`` pair (split ``"test"``); where both the raw and
        the ``.gz`` file exist, the ``.gz`` one is read.
    split : {"train", "test"}

    Returns
    -------
    images : ndarray of uint8, shape (N, rows * cols)
        Flattened images (``(N, 784)`` for MNIST).
    labels : ndarray of uint8, shape (N,)
        Class labels in 0..9.

    Raises
    ------
    ValueError
        If ``split`` is unknown.
    FileNotFoundError
        If the directory or a file is missing (the message names the path and the files
        expected).
    IdxFormatError
        If a file is malformed (see :func:`layered.data.idx.read_idx`).
    ValueError
        If images are not 3-D uint8, labels not 1-D uint8, their counts differ, or a label
        is outside 0..9.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from layered.data.idx import write_idx
    >>> d = Path(tempfile.mkdtemp())
    >>> write_idx(d / "train-images-idx3-ubyte.gz", np.ones((2, 28, 28), dtype=np.uint8))
    >>> write_idx(d / "train-labels-idx1-ubyte.gz", np.array([3, 9], dtype=np.uint8))
    >>> images, labels = load_mnist(d)
    >>> images.shape, images.dtype, labels.tolist()
    ((2, 784), dtype('uint8'), [3, 9])
    """
    images_name, labels_name = _split_files(split)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"MNIST data directory {directory} does not exist (or is not a directory); it"
            f" should hold {_expected_files()}"
        )
    images = read_idx(_find_file(directory, images_name, split))
    labels = read_idx(_find_file(directory, labels_name, split))
    _check_split(directory, split, images, labels)
    return images.reshape(images.shape[0], -1), labels


def pixels_to_unit(images: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels to ``[0, 255/256]`` as float64: ``images / 256`` (METHOD §6).

    Dividing by 256 rather than 255 keeps every pixel an exact 8-bit binary fraction, so
    the input partition ``P = (0, -1, ..., -8)`` represents it without truncation.

    Raises
    ------
    TypeError
        If ``images`` is not uint8.

    Examples
    --------
    >>> pixels_to_unit(np.array([0, 128, 255], dtype=np.uint8)).tolist()
    [0.0, 0.5, 0.99609375]
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8 (0..255), got dtype {images.dtype}")
    return images.astype(np.float64) / 256.0


def even_odd_labels(labels: np.ndarray) -> np.ndarray:
    """The paper's binary target: 1 for an even digit, 0 for an odd one (uint8).

    Examples
    --------
    >>> even_odd_labels(np.array([0, 1, 2, 7, 8])).tolist()
    [1, 0, 1, 0, 1]
    """
    return (np.asarray(labels) % 2 == 0).astype(np.uint8)


def _split_files(split: str) -> tuple[str, str]:
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SPLIT_FILES[split]


def _expected_files() -> str:
    return ", ".join(f"{name}[.gz]" for pair in _SPLIT_FILES.values() for name in pair)


def _find_file(directory: Path, name: str, split: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    images_name, labels_name = _SPLIT_FILES[split]
    raise FileNotFoundError(
        f"{directory} has no {name} or {name}.gz; split {split!r} needs"
        f" {images_name}[.gz] and {labels_name}[.gz]"
    )


def _check_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    where = f"{directory} (split {split!r})"
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{where}: images must be uint8 of shape (N, rows, cols), got {images.dtype}"
            f" {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{where}: labels must be uint8 of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(
            f"{where}: {bad.size} labels outside 0..9, first at index {bad[0]}"
            f" (value {labels[bad[0]]})"
        )


# ---------------------------------------------------------------------------- sources
def resolve_data_dir(
    source: str | os.PathLike[str],
    *,
    splits: Sequence[str] = SPLITS,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
) -> Path:
    """Turn a directory or a data set name into a directory holding MNIST-format files.

    Parameters
    ----------
    source : path-like or str
        An existing directory (returned as is; it wins over a name), ``"mnist"``
        (downloaded into the cache as needed, see :func:`download_mnist`) or
        ``"fashion-mnist"`` (Debian's ``dataset-fashion-mnist`` package).
    splits : sequence of {"train", "test"}
        The splits needed (only their files are downloaded).
    cache_dir, mirrors
        Passed to :func:`download_mnist` for ``"mnist"``.

    Raises
    ------
    FileNotFoundError
        If ``source`` is neither a directory nor a known name, or ``"fashion-mnist"`` is
        not installed.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> resolve_data_dir(d) == Path(d)
    True
    """
    path = Path(source)
    if path.is_dir():
        return path
    name = str(source).lower()
    if name == "mnist":
        return download_mnist(cache_dir, splits=splits, mirrors=mirrors)
    if name == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise FileNotFoundError(
                f"Fashion-MNIST is not installed: {FASHION_MNIST_DIR} does not exist; install"
                " it with `apt-get install dataset-fashion-mnist`"
            )
        return FASHION_MNIST_DIR
    raise FileNotFoundError(
        f"{source!r} is neither an existing directory nor a known data set name"
        f" ({', '.join(DATASET_NAMES)})"
    )


def load_dataset(
    source: str | os.PathLike[str],
    split: str = "train",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split from a directory or a named data set (see :func:`resolve_data_dir`).

    Returns
    -------
    images : ndarray of uint8, shape (N, 784)
    labels : ndarray of uint8, shape (N,)
    """
    _split_files(split)
    directory = resolve_data_dir(source, splits=(split,), cache_dir=cache_dir, mirrors=mirrors)
    return load_mnist(directory, split)


# ---------------------------------------------------------------------------- download
def default_cache_dir() -> Path:
    """Where downloaded MNIST files live: ``$LAYERED_CACHE_DIR/mnist``.

    Without ``LAYERED_CACHE_DIR``, ``~/.cache/layered/mnist``.

    Examples
    --------
    >>> default_cache_dir().name
    'mnist'
    """
    root = os.environ.get("LAYERED_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "layered"
    return base / "mnist"


def download_mnist(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    mirrors: Sequence[str] | None = None,
    timeout: float = _DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download the MNIST files of ``splits`` into a cache directory, verified.

    Each file is streamed into a temporary file inside the cache directory, checked against
    :data:`KNOWN_DIGESTS`, and only then renamed into place (atomically), so a partial or
    corrupt download never appears under its real name. A file already in the cache whose
    checksum is known is not downloaded again; one whose checksum is not is replaced.

    Parameters
    ----------
    cache_dir : path-like, optional
        Default :func:`default_cache_dir`.
    splits : sequence of {"train", "test"}
    mirrors : sequence of str, optional
        Base URLs tried in order for each file (``base + file name``). Default
        ``LAYERED_MNIST_MIRRORS`` (whitespace-separated) or :data:`DEFAULT_MIRRORS`.
    timeout : float
        Seconds allowed for connecting and for each read; a dead server fails fast.

    Returns
    -------
    Path
        The cache directory, ready for :func:`load_mnist`.

    Raises
    ------
    DownloadError
        If no mirror delivers a file (each mirror's failure is listed).
    ChecksumMismatchError
        If a mirror delivers a file matching no known checksum (names the file, URL,
        expected and actual digests). Nothing is left in the cache for that file; other
        mirrors are not tried, since a wrong file is a fault to look at, not to route around.
    """
    names = [f"{name}.gz" for split in splits for name in _split_files(split)]
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    bases = _mirror_list(mirrors)
    for name in names:
        if not _is_verified(target / name):
            _download_verified(name, bases, target, timeout)
    return target


def _mirror_list(mirrors: Sequence[str] | None) -> tuple[str, ...]:
    if mirrors is None:
        mirrors = os.environ.get("LAYERED_MNIST_MIRRORS", "").split() or DEFAULT_MIRRORS
    if isinstance(mirrors, str):
        mirrors = (mirrors,)
    if not mirrors:
        raise ValueError("no MNIST mirror given")
    return tuple(m if m.endswith("/") else f"{m}/" for m in mirrors)


def _is_verified(path: Path) -> bool:
    return path.is_file() and _matching_digest(path.name, _file_digests(path)) is not None


def _download_verified(name: str, bases: Iterable[str], target: Path, timeout: float) -> None:
    failures = []
    for base in bases:
        url = base + name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digests = _fetch(url, out, timeout)
                out.flush()
                os.fsync(out.fileno())
            _verify(name, url, digests)
            os.replace(tmp, target / name)
            return
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {name}:\n  " + "\n  ".join(failures))


def _fetch(url: str, out: BinaryIO, timeout: float) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return _digest_stream(response.read, out)


def _verify(name: str, url: str, digests: dict[str, str]) -> None:
    if _matching_digest(name, digests) is not None:
        return
    expected = " or ".join(
        f"{d.algorithm} {d.hexdigest} ({d.origin})" for d in KNOWN_DIGESTS.get(name, ())
    )
    got = ", ".join(f"{alg} {hexdigest}" for alg, hexdigest in digests.items())
    raise ChecksumMismatchError(
        f"checksum mismatch for {name} from {url}: expected {expected or 'a known file'};"
        f" got {got}. The download was discarded."
    )


def _matching_digest(name: str, digests: dict[str, str]) -> KnownDigest | None:
    for known in KNOWN_DIGESTS.get(name, ()):
        if digests.get(known.algorithm) == known.hexdigest:
            return known
    return None


def _file_digests(path: Path) -> dict[str, str]:
    with path.open("rb") as f:
        return _digest_stream(f.read)


def _digest_stream(read: Callable[[int], bytes], sink: BinaryIO | None = None) -> dict[str, str]:
    """md5 and sha256 of everything ``read`` yields, copied to ``sink`` on the way."""
    hashes = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    while chunk := read(_HASH_CHUNK_BYTES):
        if sink is not None:
            sink.write(chunk)
        for h in hashes.values():
            h.update(chunk)
    return {alg: h.hexdigest() for alg, h in hashes.items()}
