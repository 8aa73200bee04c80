"""Matmul operands: a seeded synthetic generator and validated ``.npy`` / zarr files.

Operands are read by row ranges (memory-mapped ``.npy``, or zarr slices), so a Dask worker
reads only the rows of its block and an operand larger than a worker's memory still runs.
Every check an operand needs (shape, dtype, finite values, range of an explicit partition)
is done by :func:`scan_operand` before any work starts, naming the file and the index.

Examples
--------
>>> W, X = synthetic_operands((4, 3, 2), seed=0)
>>> W.shape, X.shape, W.dtype.name
((4, 3), (3, 2), 'int8')
>>> bool(np.array_equal(W, synthetic_operands((4, 3, 2), seed=0)[0]))
True
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layered.data.store import npy_header, write_rows
from layered.layering import Partition, PartitionRangeError

__all__ = [
    "ArraySource",
    "OperandError",
    "OperandScan",
    "open_operand",
    "scan_operand",
    "check_matmul_shapes",
    "check_shape",
    "check_seed",
    "check_value_bits",
    "flops_affordable",
    "file_stamp",
    "synthetic_operands",
]

# Values scanned at a time (converted to float64) when checking a whole operand: bounded
# memory for any size.
_SCAN_VALUES = 1 << 23


class OperandError(ValueError):
    """An operand file or array cannot be used (missing, wrong shape, dtype or values)."""


@dataclass(frozen=True)
class ArraySource:
    """A 2-D array in a ``.npy`` file or a zarr array, read by row ranges.

    Attributes
    ----------
    path : str
        Absolute path of the ``.npy`` file or zarr directory.
    kind : {"npy", "zarr"}
    shape : (rows, columns)
        The 2-D shape as used (a 1-D X file is one column).
    dtype : str
        The stored dtype.
    """

    path: str
    kind: str
    shape: tuple[int, int]
    dtype: str

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an in-memory array of the stored dtype."""
        arr = self._open()
        block = np.asarray(arr[start:stop])
        return block.reshape(-1, 1) if block.ndim == 1 else block

    def read(self) -> np.ndarray:
        """The whole array (2-D)."""
        return self.rows(0, self.shape[0])

    def row_blocks(self, values: int = _SCAN_VALUES) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` blocks of about ``values`` values each (at least a row), in order."""
        step = max(1, values // max(1, self.shape[1]))
        for start in range(0, self.shape[0], step):
            yield start, self.rows(start, min(start + step, self.shape[0]))

    def _open(self) -> Any:
        if self.kind == "npy":
            return np.load(self.path, mmap_mode="r")
        import zarr  # only zarr operands need it; keeps worker start-up light

        return zarr.open_array(self.path, mode="r")


@dataclass(frozen=True)
class OperandScan:
    """What one pass over an operand found.

    Attributes
    ----------
    max_abs : float
        Largest ``|value|``.
    sha256 : str
        Digest of the values (little-endian bytes of the stored dtype, row by row), the
        same for a ``.npy`` file and a zarr array holding the same values.
    row_max, column_max : ndarray
        Largest ``|value|`` of every row and of every column (for per-row and per-column
        partitions).
    integral : bool
        Whether every value is an integer.
    """

    max_abs: float
    sha256: str
    row_max: np.ndarray
    column_max: np.ndarray
    integral: bool


def open_operand(path: str | os.PathLike[str], name: str) -> ArraySource:
    """Open ``path`` (``.npy`` file or zarr array) as operand ``name`` ("W" or "X").

    Only the header is read. A 1-D X is used as a column.

    Raises
    ------
    OperandError
        If the file does not exist, is neither ``.npy`` nor zarr, or holds an array that is
        empty, not real-numeric, or not 2-D (1-D allowed for X).
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise OperandError(f"operand {name}: file {p} does not exist")
    kind = "zarr" if p.is_dir() or p.suffix == ".zarr" else "npy"
    try:
        if kind == "npy":  # the header, checked against the file's length
            shape, dtype = npy_header(p)
        else:
            arr = ArraySource(str(p), kind, (0, 0), "int8")._open()
            shape, dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
    except (ValueError, OSError) as exc:
        raise OperandError(
            f"operand {name}: cannot read {p} as a .npy file or zarr array: {exc}"
        ) from exc
    if dtype.kind not in "iuf":
        raise OperandError(
            f"operand {name} ({p}) has dtype {dtype}; expected real integers or floats"
        )
    if len(shape) == 1 and name == "X":
        shape = (shape[0], 1)
    if len(shape) != 2:
        raise OperandError(f"operand {name} ({p}) must be a 2-D array, got shape {shape}")
    if 0 in shape:
        raise OperandError(f"operand {name} ({p}) is empty (shape {shape})")
    return ArraySource(str(p), kind, (shape[0], shape[1]), dtype.str)


def check_matmul_shapes(w: ArraySource, x: ArraySource) -> tuple[int, int, int]:
    """``(M, K, N)`` of ``W @ X``, or an error naming both shapes and files."""
    if w.shape[1] != x.shape[0]:
        raise OperandError(
            f"operands of mismatched shapes: W {w.shape} ({w.path}) has {w.shape[1]} columns"
            f" but X {x.shape} ({x.path}) has {x.shape[0]} rows; they must be equal"
        )
    return w.shape[0], w.shape[1], x.shape[1]


def scan_operand(
    source: ArraySource, name: str, partition: Partition | None = None
) -> OperandScan:
    """Check every value of ``source`` and digest it, in one pass of bounded memory.

    Parameters
    ----------
    source : ArraySource
    name : str
        "W" or "X", for messages.
    partition : Partition, optional
        When given, every value must satisfy ``|a| < 2**p_0``.

    Raises
    ------
    OperandError
        On a NaN or infinite value (naming its index and the file).
    PartitionRangeError
        On a value outside ``partition``'s range (naming value, index, file and p_0).
    """
    return _scan_cached(source, name, partition, file_stamp(source.path))


@functools.lru_cache(maxsize=8)
def _scan_cached(
    source: ArraySource, name: str, partition: Partition | None, stamp: tuple[int, int]
) -> OperandScan:
    # Cached on (file, size, mtime): the CLI checks operands before starting anything and
    # the flow checks them again in the same process, so the second pass is free.
    digest = hashlib.sha256()
    row_max = np.zeros(source.shape[0])
    column_max = np.zeros(source.shape[1])
    integral = True
    for start, block in source.row_blocks():
        values = block.astype(np.float64, copy=False)
        bad = ~np.isfinite(values)
        if bad.any():
            idx = _global_index(bad, start)
            raise OperandError(
                f"operand {name}{list(idx)} = {float(values[idx[0] - start, idx[1]])!r} in"
                f" {source.path} is not finite ({int(bad.sum())} NaN/inf value(s) in this"
                " block)"
            )
        if partition is not None:
            over = np.abs(values) >= partition.limit
            if over.any():
                idx = _global_index(over, start)
                raise PartitionRangeError(
                    f"operand {name}{list(idx)} = {float(values[idx[0] - start, idx[1]])!r} in"
                    f" {source.path} is out of range for partition {partition.points}:"
                    f" |value| must be < 2^p_0 = {partition.limit:g}"
                )
        mag = np.abs(values)
        row_max[start : start + len(mag)] = np.max(mag, axis=1)
        np.maximum(column_max, np.max(mag, axis=0), out=column_max)
        if integral and block.dtype.kind == "f":
            integral = bool(np.all(np.trunc(values) == values))
        digest.update(np.ascontiguousarray(block).astype(block.dtype.newbyteorder("<")).tobytes())
    return OperandScan(float(np.max(row_max)), digest.hexdigest(), row_max, column_max, integral)


def file_stamp(path: str) -> tuple[int, int]:
    """A file's size and modification time (a zarr array's: its ``zarr.json``'s).

    Keys the per-process caches of what is read from a file, so that a file replaced
    under the same name (a run id deleted and reused) is read again.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "zarr.json")
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _global_index(mask: np.ndarray, row_offset: int) -> tuple[int, int]:
    r, c = np.unravel_index(int(np.argmax(mask)), mask.shape)
    return int(r) + row_offset, int(c)


def synthetic_operands(
    shape: Sequence[int], seed: int, value_bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random integer operands ``W`` (M x K) and ``X`` (K x N).

    Values are uniform in ``[-2**(value_bits-1), 2**(value_bits-1))`` (the two's
    complement range), stored in the smallest integer dtype that holds them. They are
    those :func:`write_synthetic_operands` writes to files, block by block.

    Raises
    ------
    OperandError
        If the shape is not three positive integers, the seed is negative or
        ``value_bits`` is not in [2, 32].
    """
    m, k, n = check_shape(shape)
    check_seed(seed)
    check_value_bits(value_bits)
    W = np.concatenate([b for _, b in _synthetic_blocks((m, k), seed, 0, value_bits)])
    X = np.concatenate([b for _, b in _synthetic_blocks((k, n), seed, 1, value_bits)])
    return W, X


def write_synthetic_operands(
    shape: Sequence[int], seed: int, value_bits: int, w_path: str, x_path: str
) -> None:
    """Fill ``.npy`` files (already of the right shape and dtype, e.g. staged by the run
    store) with :func:`synthetic_operands`, a block of rows at a time: operands larger
    than memory are generated to disk."""
    m, k, n = check_shape(shape)
    check_seed(seed)
    for path, dims, which in ((w_path, (m, k), 0), (x_path, (k, n), 1)):
        for start, block in _synthetic_blocks(dims, seed, which, value_bits):
            write_rows(path, (start, start + len(block)), block)


def synthetic_dtype(value_bits: int) -> np.dtype:
    """The dtype of synthetic ``value_bits``-bit operands."""
    return np.dtype(np.min_scalar_type(-(2 ** (check_value_bits(value_bits) - 1))))


#: Bytes of one generated block of synthetic rows.
_SYNTHETIC_BLOCK_BYTES = 2**26


def _synthetic_blocks(
    dims: tuple[int, int], seed: int, which: int, value_bits: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` of a synthetic operand (``which``: 0 for W, 1 for X), each
    block drawn from its own generator, seeded by ``(seed, which, block)``."""
    rows, cols = dims
    dtype = synthetic_dtype(value_bits)
    lo, hi = -(2 ** (value_bits - 1)), 2 ** (value_bits - 1)
    step = max(1, _SYNTHETIC_BLOCK_BYTES // (cols * dtype.itemsize))
    for block, start in enumerate(range(0, rows, step)):
        rng = np.random.default_rng([seed, which, block])
        yield start, rng.integers(lo, hi, size=(min(step, rows - start), cols), dtype=dtype)


def check_shape(shape: Sequence[int] | None) -> tuple[int, int, int]:
    """``(M, K, N)`` as ints, or an error if it is not three positive integers."""
    dims = tuple(shape or ())
    if len(dims) != 3 or any(
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dims
    ):
        raise OperandError(f"shape must be three positive integers M K N, got {list(dims)}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def check_seed(seed: int) -> int:
    """``seed`` if it can seed the synthetic generator (an integer >= 0)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OperandError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def check_value_bits(value_bits: int) -> int:
    """``value_bits`` if synthetic integers can have that many bits (2 to 32)."""
    if isinstance(value_bits, bool) or not isinstance(value_bits, int) or not 2 <= value_bits <= 32:
        raise OperandError(f"value_bits must be an integer in [2, 32], got {value_bits!r}")
    return value_bits


def flops_affordable(shape: Sequence[int], limit: int) -> bool:
    """Is ``M*K*N`` at most ``limit`` (a one-shot reference product is affordable)?"""
    return math.prod(int(d) for d in shape) <= limit
