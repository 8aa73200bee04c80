"""IDX files (the MNIST container format): a validating reader and a writer.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then exactly ``prod(dims)`` big-endian items. Files may be
gzip-compressed; compression is detected from the gzip magic bytes ``1f 8b``, not from the
file name. A file that does not follow the format exactly (bad magic, unknown dtype code,
short or long payload, corrupt gzip stream) raises :class:`IdxFormatError` naming the file,
never returns garbage.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "demo-idx2-ubyte.gz"
>>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
>>> read_idx(path).tolist()
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "IdxFormatError", "read_idx", "write_idx"]

#: IDX dtype codes (third magic byte) and the big-endian numpy dtype each stands for.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
# Payloads are read in bounded chunks so that a header claiming absurd dimensions fails on
# the length check instead of attempting one huge allocation.
_CHUNK_BYTES = 1 << 24


class IdxFormatError(ValueError):
    """An IDX file is malformed: bad magic number, dimensions or payload length."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian numpy array.

    Parameters
    ----------
    path : path-like
        The file. Gzip compression is detected from its first two bytes.

    Returns
    -------
    ndarray
        Shape as given by the header dimensions, dtype as given by its dtype code
        (native byte order; ``uint8`` for MNIST images and labels).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    IdxFormatError
        If the magic number, dtype code or dimensions are invalid, the payload is shorter
        or longer than the dimensions say, or the gzip stream is corrupt. The message names
        the file (and, for a length error, the expected and actual byte counts).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    with path.open("rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    try:
        with _open_stream(path, compressed) as stream:
            return _read_stream(stream, path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise IdxFormatError(f"{path}: corrupt gzip stream ({exc})") from exc


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> None:
    """Write ``array`` as an IDX file.

    Parameters
    ----------
    path : path-like
        Destination file (overwritten).
    array : ndarray
        At least one dimension; dtype uint8, int8, int16, int32, float32 or float64.
    compress : bool, optional
        Gzip the file. Default: when the file name ends in ``.gz``.

    Raises
    ------
    IdxFormatError
        If the dtype has no IDX code, the array is 0-dimensional, has more than 255
        dimensions, or a dimension does not fit in uint32.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x-idx1-double"
    >>> write_idx(path, np.array([0.5, -1.0]))
    >>> read_idx(path)
    array([ 0.5, -1. ])
    """
    path = Path(path)
    arr = np.asarray(array)
    code = _dtype_code(arr.dtype)
    if not 1 <= arr.ndim <= 255:
        raise IdxFormatError(f"{path}: IDX needs 1 to 255 dimensions, got shape {arr.shape}")
    if any(d >= 2**32 for d in arr.shape):
        raise IdxFormatError(f"{path}: dimension too large for IDX (uint32) in {arr.shape}")
    header = bytes((0, 0, code, arr.ndim)) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    compress = path.name.endswith(".gz") if compress is None else compress
    opener = gzip.open if compress else open
    with opener(path, "wb") as out:
        out.write(header)
        out.write(payload)


def _open_stream(path: Path, compressed: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _dtype_code(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.newbyteorder("=") == dtype.newbyteorder("="):
            return code
    known = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
    raise IdxFormatError(f"dtype {dtype} has no IDX code; supported: {known}")


def _read_stream(stream: io.BufferedIOBase, path: Path) -> np.ndarray:
    dtype, shape = _read_header(stream, path)
    expected = math.prod(shape) * dtype.itemsize
    payload = _read_at_most(stream, expected)
    if len(payload) < expected:
        raise IdxFormatError(
            f"{path}: truncated payload: dimensions {shape} of {dtype.newbyteorder('=')} need"
            f" {expected} bytes, found {len(payload)}"
        )
    if stream.read(1):
        raise IdxFormatError(
            f"{path}: trailing data after the {expected}-byte payload that dimensions"
            f" {shape} describe"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_header(stream: io.BufferedIOBase, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = stream.read(4)
    if len(magic) < 4:
        raise IdxFormatError(f"{path}: file too short for an IDX magic number ({len(magic)} bytes)")
    if magic[:2] != b"\x00\x00":
        raise IdxFormatError(
            f"{path}: bad IDX magic number {magic.hex()}: the first two bytes must be 00 00"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise IdxFormatError(f"{path}: unknown IDX dtype code 0x{code:02x}; known: {known}")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IdxFormatError(
            f"{path}: truncated header: {ndim} dimensions need {4 * ndim} bytes, found {len(dims)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    return IDX_DTYPES[code], shape


def _read_at_most(stream: io.BufferedIOBase, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(remaining, _CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
