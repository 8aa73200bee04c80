"""What a matmul run computes: the user's request, completed and checked before any work.

A request leaves out what the user did not say; :func:`resolve_matmul` fills it from the
run being resumed (so ``--run-id ID`` alone resumes a run) and then from the settings,
opens and scans operand files, and chooses the partitions. Everything that can be wrong
with the input is reported here, before a server, a cluster or a task starts.

Examples
--------
>>> from layered.settings import Settings
>>> spec = resolve_matmul(MatmulRequest(shape=(8, 4, 2), seed=1), Settings())
>>> spec.shape, spec.pw.points, spec.parameters["ordering"]
((8, 4, 2), (8, 4, 0), 'anti-diagonal')
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layered.data.operands import (
    ArraySource,
    OperandError,
    check_matmul_shapes,
    check_seed,
    check_shape,
    check_value_bits,
    open_operand,
    scan_operand,
    synthetic_dtype,
)
from layered.data.store import RunStoreError
from layered.layering import Ordering, Partition, PartitionRangeError, resolve_ordering
from layered.settings import Settings

__all__ = ["MatmulRequest", "MatmulSpec", "resolve_matmul", "check_limits", "check_room",
           "RunTooLargeError"]


@dataclass(frozen=True)
class MatmulRequest:
    """A matmul run as asked for; None means "as the resumed run had it, else the default".

    Attributes
    ----------
    shape, seed, value_bits
        Synthetic operands (``value_bits``-bit integers, seeded).
    operands : (W path, X path)
        Operand files (``.npy`` or zarr) instead of synthetic ones.
    bits : tuple of int
        Magnitude bits per component; the partitions are chosen from the data.
    partition : tuple of int
        An explicit partitioning vector for both operands (values must fit it).
    ordering : str
    scaled : bool
        One partition per row of W and per column of X (see
        :meth:`layered.layering.Partition.auto`); None: chosen from the data (operand
        files holding non-integer values are scaled, with ``settings.float_bits``
        unless ``bits`` is given).
    """

    shape: tuple[int, int, int] | None = None
    seed: int | None = None
    value_bits: int | None = None
    operands: tuple[str, str] | None = None
    bits: tuple[int, ...] | None = None
    partition: tuple[int, ...] | None = None
    ordering: str | None = None
    scaled: bool | None = None

    def completed(self, stored: Mapping[str, Any] | None, settings: Settings) -> MatmulRequest:
        """Fill what is missing from ``stored`` run parameters, then from ``settings``."""
        if self.operands is not None and (self.shape is not None or self.seed is not None):
            raise OperandError("give synthetic operands (shape, seed) or operand files, not both")
        kind = "files" if self.operands else "synthetic" if self.shape or self.seed else None
        if stored is not None:
            _check_stored(stored)
        if stored is not None and kind in (None, stored["kind"]):
            kind = stored["kind"]
            files = stored["operands"]
            return _fill(self, {
                "shape": tuple(stored["shape"]) if kind == "synthetic" else None,
                "seed": stored["seed"],
                "value_bits": stored["value_bits"],
                "operands": (files["W"]["path"], files["X"]["path"]) if files else None,
                "bits": tuple(stored["bits"]),
                "partition": tuple(stored["partition"]) if stored["partition"] else None,
                "ordering": stored["ordering"],
                "scaled": bool(stored.get("scaled")),  # manifests before it: global
            })
        synthetic = kind != "files"
        return _fill(self, {
            "shape": settings.shape if synthetic else None,
            "seed": settings.seed if synthetic else None,
            "value_bits": settings.value_bits if synthetic else None,
            "bits": settings.bits,
            "ordering": settings.ordering,
        })


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value: object, length: int | None = None) -> bool:
    return (isinstance(value, list) and all(_is_int(v) for v in value)
            and (length is None or len(value) == length))


def _stored_operands_ok(kind: object, operands: object) -> bool:
    if kind == "synthetic":
        return operands is None
    return isinstance(operands, dict) and all(
        isinstance(operands.get(n), dict) and isinstance(operands[n].get("path"), str)
        for n in ("W", "X")
    )


def _check_stored(stored: Mapping[str, Any]) -> None:
    """Refuse stored run parameters of the wrong kind (a manifest edited or damaged)."""
    kind = stored.get("kind")
    valid = {
        "kind": kind in ("synthetic", "files"),
        "shape": _is_int_list(stored.get("shape"), 3),
        "seed": stored.get("seed") is None or _is_int(stored.get("seed")),
        "value_bits": stored.get("value_bits") is None or _is_int(stored.get("value_bits")),
        "operands": _stored_operands_ok(kind, stored.get("operands")),
        "bits": _is_int_list(stored.get("bits")),
        "partition": stored.get("partition") is None or _is_int_list(stored.get("partition")),
        "ordering": stored.get("ordering") is None or isinstance(stored.get("ordering"), str),
        "scaled": stored.get("scaled") is None or isinstance(stored.get("scaled"), bool),
    }
    wrong = [f"{key} = {stored.get(key)!r}" for key, ok in valid.items() if not ok]
    if wrong:
        raise RunStoreError(
            "the manifest of the run being resumed holds parameters this version cannot use"
            " (edited or damaged): " + "; ".join(wrong)
        )


def check_limits(
    deadline: float | None, tolerance: float | None, block_rows: int | None
) -> None:
    """Refuse limits a run cannot honour, before it starts.

    Raises
    ------
    ValueError
        A deadline that is negative or not finite, a tolerance that is negative or NaN, or
        fewer than one row per block.

    Examples
    --------
    >>> check_limits(deadline=0.0, tolerance=1e3, block_rows=256)
    >>> check_limits(deadline=-1.0, tolerance=None, block_rows=None)
    Traceback (most recent call last):
    ...
    ValueError: deadline must be a finite number of seconds >= 0, got -1.0
    """
    if deadline is not None and not (math.isfinite(deadline) and deadline >= 0):
        raise ValueError(f"deadline must be a finite number of seconds >= 0, got {deadline!r}")
    if tolerance is not None and not tolerance >= 0:  # also refuses NaN
        raise ValueError(
            f"tolerance must be a number >= 0 (a bound on |W X - estimate|), got {tolerance!r}"
        )
    if block_rows is not None and (not _is_int(block_rows) or block_rows < 1):
        raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")


def run_kernel(kernel: str, device: str | None, work: int, settings: Settings) -> str:
    """The kernel a pipeline run asks its workers for: ``kernel``, except that ``"auto"``
    on the CPU becomes ``"numpy"`` for a run of fewer than ``settings.torch_min_work``
    multiply-adds, which would not repay loading torch on each worker.

    Examples
    --------
    >>> run_kernel("auto", None, 2048 * 2048 * 512, Settings())
    'numpy'
    >>> run_kernel("auto", None, 8192 * 8192 * 1024, Settings())
    'auto'
    >>> run_kernel("torch", None, 1, Settings())
    'torch'
    """
    if kernel == "auto" and device in (None, "cpu") and work < settings.torch_min_work:
        return "numpy"
    return kernel


def check_kernel(kernel: str, device: str | None) -> None:
    """Refuse a product kernel or device this machine cannot provide, before a run starts.

    ``"auto"`` on any device is always available (it falls back to numpy); the check
    resolves the others here, where the run is started (Dask workers resolve the same
    names themselves).

    Raises
    ------
    ValueError
        An unknown kernel or device, or one that is missing here (torch not installed,
        no CUDA GPU), saying what is missing and how to install it.

    Examples
    --------
    >>> check_kernel("numpy", None)
    >>> check_kernel("numpy", "cuda")
    Traceback (most recent call last):
    ...
    ValueError: kernel='numpy' runs on the CPU; use kernel='torch' or 'auto' with device='cuda'
    """
    from layered.layering import resolve_kernel

    if kernel != "auto" or device not in (None, "cpu"):
        resolve_kernel(kernel, device)


def _fill(request: MatmulRequest, values: Mapping[str, Any]) -> MatmulRequest:
    own = {k: getattr(request, k) for k in request.__dataclass_fields__}
    return MatmulRequest(**{k: own[k] if own[k] is not None else values.get(k) for k in own})


class RunTooLargeError(ValueError):
    """A run needs more than the machine has (what it needs against what it has)."""


@dataclass(frozen=True)
class MatmulSpec:
    """A checked matmul run: operands, partitions, ordering, and its manifest parameters.

    ``w`` and ``x`` are None for synthetic operands until the flow generates them.
    """

    request: MatmulRequest
    shape: tuple[int, int, int]
    pw: Partition
    px: Partition
    order: Ordering
    w: ArraySource | None
    x: ArraySource | None
    max_abs: tuple[float, float]
    parameters: dict[str, Any]


def resolve_matmul(
    request: MatmulRequest, settings: Settings, stored: Mapping[str, Any] | None = None
) -> MatmulSpec:
    """Complete ``request`` (see :meth:`MatmulRequest.completed`) and check every input.

    Parameters
    ----------
    request : MatmulRequest
    settings : Settings
    stored : mapping, optional
        The ``parameters`` of the run being resumed.

    Raises
    ------
    OperandError
        Missing or unreadable files, mismatched shapes, empty or non-numeric operands,
        NaN/inf values, a bad synthetic shape.
    PartitionRangeError
        A value outside an explicit partition's range.
    ValueError
        A bad partition, bit list or ordering.
    RunStoreError
        Stored parameters of the wrong kind (a hand-edited manifest).
    """
    req = request.completed(stored, settings)
    explicit = Partition(req.partition) if req.partition else None
    if req.operands is not None:
        w = open_operand(req.operands[0], "W")
        x = open_operand(req.operands[1], "X")
        shape = check_matmul_shapes(w, x)
        scans = (scan_operand(w, "W", explicit), scan_operand(x, "X", explicit))
        max_abs = (scans[0].max_abs, scans[1].max_abs)
        integral = scans[0].integral and scans[1].integral
        files: dict[str, Any] | None = {
            name: {"path": src.path, "sha256": scan.sha256, "shape": list(src.shape),
                   "dtype": src.dtype}
            for name, src, scan in (("W", w, scans[0]), ("X", x, scans[1]))
        }
    else:
        shape = check_shape(req.shape)
        if req.seed is not None:
            check_seed(req.seed)
        w = x = None
        top = float(2 ** (check_value_bits(req.value_bits or 0) - 1))  # largest |value|
        _check_synthetic_range(top, explicit)
        max_abs, files, integral = (top, top), None, True
    scaled = req.operands is not None and (
        req.scaled if req.scaled is not None else explicit is None and not integral)
    bits = req.bits or ()
    if scaled and req.scaled is None and request.bits is None:
        bits = settings.float_bits  # float operands: enough slices for float64 accuracy
    if scaled:
        pw = Partition.auto(scans[0].row_max[:, None], bits=bits, axis=1)
        px = Partition.auto(scans[1].column_max[None, :], bits=bits, axis=0)
    else:
        pw = explicit or Partition.auto([max_abs[0]], bits=bits)
        px = explicit or Partition.auto([max_abs[1]], bits=bits)
    order = resolve_ordering(req.ordering or "", pw, px)
    parameters = {
        "kind": "files" if files else "synthetic",
        "shape": list(shape),
        "seed": req.seed,
        "value_bits": req.value_bits,
        "operands": files,
        "bits": list(bits),
        "partition": list(req.partition) if req.partition else None,
        "ordering": req.ordering,
        "partition_w": list(pw.points),
        "partition_x": list(px.points),
        # only when true, so that runs stored before it resume as they were
        **({"scaled": True} if scaled else {}),
    }
    return MatmulSpec(req, shape, pw, px, order, w, x, max_abs, parameters)


def check_room(spec: MatmulSpec, store: str | os.PathLike[str]) -> int:
    """Bytes a new run of ``spec`` writes to ``store``; an error if its disk lacks them.

    A run writes synthetic operands (generated to disk block by block) and per resolution
    its estimate and bound (float64, M x N each). The workers need only a block of rows in
    memory at a time (they keep the split blocks that fit in a share of their memory), so
    disk is what bounds a run.

    Raises
    ------
    RunTooLargeError
        If the free space of the store's file system is less than what the run writes,
        naming the option (``--shape`` or ``--operands``) and both figures.
    """
    m, k, n = spec.shape
    operands = 0
    if spec.w is None:
        itemsize = synthetic_dtype(spec.request.value_bits or 8).itemsize
        operands = itemsize * (m * k + k * n)
    results = 2 * 8 * m * n * spec.order.resolutions
    needed = operands + results
    where = Path(store)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        option = ("--operands" if spec.w is not None
                  else "--shape " + " ".join(map(str, spec.shape)))
        raise RunTooLargeError(
            f"{option}: the run writes about {_gib(needed)} to {store} (operands"
            f" {_gib(operands)}, results {_gib(results)}), and"
            f" {where} has {_gib(free)} free; free some space, give a smaller shape, or"
            " --store on a larger disk"
        )
    return needed


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _check_synthetic_range(top: float, explicit: Partition | None) -> None:
    if explicit is not None and top >= explicit.limit:
        raise PartitionRangeError(
            f"synthetic operands reach |value| = {top:g}, out of range for partition"
            f" {explicit.points}: |value| must be < 2^p_0 = {explicit.limit:g}"
        )
