"""The run store: one directory per run, written atomically, resumable, one writer at a time.

Layout of ``<store>/<run_id>/``::

    manifest.json          parameters, prepared inputs, completed resolutions (written last)
    .lock                  held (flock) by the one process writing this run
    .staging/              arrays being written (never read as results)
    <name>.npy ...         committed arrays, each listed in the manifest

Every file is written to a temporary name in the same directory, flushed to disk
(``fsync``) and renamed over its final name (``os.replace``), then the directory is synced,
so no half-written file ever has a final name. The manifest is written after the arrays it
lists: a resolution is complete exactly when the manifest lists it, and a run that stopped
or crashed resumes after the last listed resolution.

A writer killed at any point leaves nothing a reader could take for a result: its staged
arrays and temporary files have names no manifest lists, and the next writer of the run
removes them. The lock is an ``flock``, which the kernel releases when its holder dies, so
a crashed writer never blocks the resume. Staged names carry a token of the writer that
made them, so a task a dead writer left running on a cluster cannot write into the files of
the writer that resumed the run. Reading a manifest checks every file it lists (present,
inside the run, a complete ``.npy``), so a hand-edited or damaged run is refused before any
work starts.

Examples
--------
>>> import tempfile
>>> store = RunStore(tempfile.mkdtemp())
>>> with store.open("demo", kind="matmul", parameters={"shape": [2, 2, 2]}) as run:
...     run.completed_resolutions()
[]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RunStore",
    "Run",
    "RunStoreError",
    "RunLockedError",
    "RunMismatchError",
    "MANIFEST",
    "atomic_write_bytes",
    "atomic_save_npy",
    "new_run_id",
    "npy_header",
    "write_rows",
]

MANIFEST = "manifest.json"
FORMAT = 1
STAGING = ".staging"
#: Fields of a manifest entry that must hold real numbers when present.
_NUMBER_FIELDS = ("elapsed_s", "bound")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunStoreError(ValueError):
    """A run directory or manifest cannot be used as asked."""


class RunLockedError(RunStoreError):
    """Another process is writing the same run."""


class RunMismatchError(RunStoreError):
    """A run id was resumed with parameters other than the ones it was started with."""


def new_run_id(kind: str) -> str:
    """A fresh run id such as ``matmul-20260101-020000-1a2b3c``."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``.npy`` file at ``path``, after checking it is complete.

    Only the header is read; the file's length must cover the data it announces.

    Raises
    ------
    ValueError
        If the file is not a ``.npy`` file (bad magic or header), holds Python objects, or
        is shorter than its header says (the message names the file, the expected and the
        actual length).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.npy"
    >>> np.save(path, np.zeros((3, 2), dtype=np.int8))
    >>> npy_header(path)
    ((3, 2), dtype('int8'))
    """
    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(fh)
        except (ValueError, SyntaxError, EOFError) as exc:
            raise ValueError(f"{path} is not a valid .npy file: {exc}") from None
        data_start = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects (dtype {dtype}), not numbers")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = os.stat(path).st_size
    if size < expected:
        raise ValueError(
            f"{path} is truncated: its header announces shape {shape} of {dtype}, {expected}"
            f" bytes in all, but the file has {size}"
        )
    return tuple(int(d) for d in shape), dtype


def write_empty_npy(path: str | os.PathLike[str], shape: tuple[int, ...], dtype: str) -> None:
    """A ``.npy`` file of ``shape`` and ``dtype`` holding zeros: its header, then a sparse
    extent (no data written, no memory map: a fraction of a millisecond at any size).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.npy"
    >>> write_empty_npy(path, (3, 2), "<f8")
    >>> np.load(path).tolist()
    [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    """
    dt = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False,
              "shape": tuple(shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.truncate(fh.tell() + math.prod(shape) * dt.itemsize)


def write_rows(
    path: str | os.PathLike[str], rows: tuple[int, int], values: np.ndarray
) -> None:
    """Write ``values`` (broadcast to the rows) into rows ``start:stop`` of the ``.npy`` file.

    For staged arrays (:meth:`Run.stage_array`) that workers fill by rows, concurrently
    for disjoint rows. Plain positioned writes, closed before returning: no memory map
    and no ``msync`` per block. Closing the file is what makes the rows visible to another
    machine on a network file system (close-to-open consistency); durability is the
    commit's, which flushes each whole file to disk once (``fsync``) before its rename
    (:meth:`Run.commit_arrays`), so a killed writer still leaves only whole listed files.

    Raises
    ------
    ValueError
        If the rows are not rows of the file, or the values do not broadcast to them.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.npy"
    >>> np.save(path, np.zeros((4, 2)))
    >>> write_rows(path, (1, 3), np.ones((2, 2)))
    >>> np.load(path)[:, 0].tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    fmt = np.lib.format
    start, stop = rows
    with open(path, "r+b") as fh:
        version = fmt.read_magic(fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran_order, dtype = read(fh)
        if fortran_order or not shape or not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"rows {start}:{stop} are not rows of {path} (shape"
                             f" {tuple(shape)}{', Fortran order' if fortran_order else ''})")
        block = np.broadcast_to(np.asarray(values), (stop - start, *shape[1:]))
        data = memoryview(np.ascontiguousarray(block, dtype=dtype)).cast("B")
        offset = fh.tell() + start * (data.nbytes // max(stop - start, 1))
        while data:
            written = os.pwrite(fh.fileno(), data, offset)
            data, offset = data[written:], offset + written


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``final`` (same directory), then sync it."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _publish(Path(tmp), final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (temporary file, fsync, rename)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)
        _publish(Path(tmp), final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RunStore:
    """A directory of runs.

    Parameters
    ----------
    root : path
        The store directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def run_dir(self, run_id: str) -> Path:
        """Directory of ``run_id`` (validated: letters, digits, ``.``, ``_``, ``-``)."""
        if not _RUN_ID.match(run_id):
            raise RunStoreError(
                f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-',"
                " starting with a letter or digit"
            )
        if self.root.exists() and not self.root.is_dir():
            raise RunStoreError(f"the run store {self.root} exists but is not a directory")
        return self.root / run_id

    def read_manifest(self, run_id: str) -> dict[str, Any] | None:
        """The manifest of ``run_id``, or None if the run has none yet.

        Raises
        ------
        RunStoreError
            If the manifest exists but is not a valid manifest.
        """
        path = self.run_dir(run_id) / MANIFEST
        if not path.exists():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunStoreError(f"manifest {path} is not valid JSON: {exc}") from exc
        _check_manifest(manifest, path)
        return manifest

    def check_resumable(self, run_id: str, *, kind: str, parameters: Mapping[str, Any]) -> None:
        """Raise now what :meth:`open` would: the run is being written, or differs.

        Lets a caller refuse a run before starting anything (the lock is not kept).
        """
        path = self.run_dir(run_id)
        if not path.is_dir():
            return
        with _exclusive_lock(path, run_id):
            manifest = self.read_manifest(run_id)
            if manifest is not None:
                _check_same_run(manifest, kind, _as_stored(parameters), path)

    @contextlib.contextmanager
    def open(
        self, run_id: str, *, kind: str, parameters: Mapping[str, Any]
    ) -> Iterator[Run]:
        """Open ``run_id`` for writing: create it, or resume it with the same parameters.

        Holds an exclusive lock on ``<run>/.lock`` until the block exits.

        Raises
        ------
        RunLockedError
            If another process holds the run.
        RunMismatchError
            If the run exists with another kind or other parameters.
        """
        path = self.run_dir(run_id)
        path.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path, run_id):
            manifest = self.read_manifest(run_id)
            params = _as_stored(parameters)
            if manifest is None:
                manifest = {
                    "format": FORMAT,
                    "kind": kind,
                    "run_id": run_id,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "parameters": params,
                    "prepared": {},
                    "resolutions": [],
                }
            else:
                _check_same_run(manifest, kind, params, path)
            run = Run(path, manifest)
            _discard_unfinished_writes(path)
            run.staging.mkdir()
            run.write_manifest()
            yield run


def _discard_unfinished_writes(path: Path) -> None:
    """Remove what writers of ``path`` that died left: staged arrays and temporary files.

    Called with the run's lock held, so no live writer owns them.
    """
    shutil.rmtree(path / STAGING, ignore_errors=True)
    for tmp in path.rglob(".*.tmp"):  # the names atomic_write_bytes and atomic_save_npy use
        tmp.unlink(missing_ok=True)


def _as_stored(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` as the manifest stores them (JSON: tuples become lists)."""
    return json.loads(json.dumps(dict(parameters)))


@contextlib.contextmanager
def _exclusive_lock(path: Path, run_id: str) -> Iterator[None]:
    lock_path = path / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"run {run_id!r} in {path.parent} is being written by another process"
                f" (pid {holder}, lock {lock_path}); wait for it to finish or use another"
                " --run-id"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _check_manifest(manifest: object, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise RunStoreError(
            f"manifest {path} must hold a JSON object, got {type(manifest).__name__}"
        )
    if manifest.get("format") != FORMAT:
        raise RunStoreError(
            f"manifest {path} has format {manifest.get('format')!r}; this version reads {FORMAT}"
        )
    fields = (("kind", str), ("parameters", dict), ("prepared", dict), ("resolutions", list))
    for key, kind in fields:
        if not isinstance(manifest.get(key), kind):
            raise RunStoreError(
                f"manifest {path}: field {key!r} is missing or not a {kind.__name__}"
            )
    for i, entry in enumerate(manifest["resolutions"], start=1):
        if not isinstance(entry, dict) or entry.get("resolution") != i:
            raise RunStoreError(
                f"manifest {path}: resolutions must be listed in order 1, 2, ...; entry {i}"
                f" is {entry!r}"
            )
        _check_entry(entry, f"resolution {i}", path)
    for name, value in manifest["prepared"].items():
        if isinstance(value, dict):
            _check_entry(value, f"prepared input {name!r}", path)


def _check_entry(entry: Mapping[str, Any], where: str, path: Path) -> None:
    """Numbers are numbers, and every file in ``entry["files"]`` is a complete file of the run."""
    for key in _NUMBER_FIELDS:
        value = entry.get(key)
        if key in entry and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RunStoreError(f"manifest {path}: {where} has {key} = {value!r}, not a number")
    files = entry.get("files", {})
    if not isinstance(files, dict):
        raise RunStoreError(f"manifest {path}: {where} lists files {files!r}, not a mapping")
    run_dir = path.parent.resolve()
    for name, rel in files.items():
        problem = _file_problem(run_dir, rel)
        if problem:
            raise RunStoreError(f"manifest {path}: {where} lists {name!r}: {rel!r} {problem}")


def _file_problem(run_dir: Path, rel: object) -> str | None:
    """Why ``rel`` is not a complete file inside ``run_dir``, or None if it is."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return "is not a path relative to the run directory"
    target = (run_dir / rel).resolve()
    if not target.is_relative_to(run_dir):
        return "points outside the run directory"
    if not target.is_file():
        return "does not exist (the run's files were removed or the manifest edited)"
    if target.suffix == ".npy":
        try:
            npy_header(target)
        except ValueError as exc:
            return f"is damaged: {exc}"
    return None


def _check_same_run(
    manifest: dict[str, Any], kind: str, params: dict[str, Any], path: Path
) -> None:
    if manifest["kind"] != kind:
        raise RunMismatchError(f"run {path} is a {manifest['kind']} run, not {kind}")
    old = manifest["parameters"]
    diffs = [
        f"{key}: started with {old.get(key)!r}, now {params.get(key)!r}"
        for key in sorted(set(old) | set(params))
        if old.get(key) != params.get(key)
    ]
    if diffs:
        raise RunMismatchError(
            f"run {path.name!r} in {path.parent} was started with other parameters, so it"
            " cannot be resumed with these; use the original ones or another --run-id. "
            + "; ".join(diffs)
        )


class Run:
    """One open run (see :meth:`RunStore.open`): staged arrays, commits, the manifest."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.staging = path / STAGING
        # Names this writer stages carry this token: see the module docstring.
        self._token = os.urandom(4).hex()

    @property
    def run_id(self) -> str:
        return self.path.name

    def completed_resolutions(self) -> list[dict[str, Any]]:
        """Manifest entries of the completed resolutions, in order."""
        return list(self.manifest["resolutions"])

    def stage_array(self, name: str, shape: tuple[int, ...], dtype: str) -> str:
        """Create a ``.npy`` file under ``.staging`` for workers to fill by rows."""
        path = self._staged_path(name, ".npy")
        write_empty_npy(path, shape, dtype)
        return str(path)

    def stage_copy(self, rel: str, name: str) -> str:
        """A staged copy of the committed file ``<run>/<rel>``, for workers to update in place."""
        path = self._staged_path(name, Path(rel).suffix)
        shutil.copyfile(self.path / rel, path)
        return str(path)

    def stage_file(self, name: str, suffix: str) -> str:
        """The staged path for a file a worker writes whole (``suffix`` such as ``.npz``)."""
        return str(self._staged_path(name, suffix))

    def _staged_path(self, name: str, suffix: str) -> Path:
        return self.staging / f"{name}.{self._token}{suffix}"

    def commit_arrays(self, staged: Mapping[str, str]) -> dict[str, str]:
        """Move filled staged arrays to their final names (``{final relpath: staged path}``).

        Returns the relative paths, for the manifest entry that lists them.
        """
        for rel, tmp in staged.items():
            final = self.path / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            _publish(Path(tmp), final)
        return {Path(rel).stem: rel for rel in staged}

    def save_array(self, rel: str, array: np.ndarray) -> str:
        """Write ``array`` to ``<run>/<rel>`` atomically; return ``rel``."""
        atomic_save_npy(self.path / rel, array)
        return rel

    def array_path(self, rel: str) -> str:
        return str(self.path / rel)

    def record_prepared(self, name: str, value: Any) -> None:
        """Note in the manifest that input ``name`` is prepared (after its files exist)."""
        self.manifest["prepared"][name] = value
        self.write_manifest()

    def record_resolution(self, entry: Mapping[str, Any]) -> None:
        """List a completed resolution (after its arrays are committed)."""
        expected = len(self.manifest["resolutions"]) + 1
        if entry.get("resolution") != expected:
            raise RunStoreError(
                f"run {self.run_id!r}: resolution {entry.get('resolution')} recorded after"
                f" {expected - 1}; resolutions are recorded in order"
            )
        self.manifest["resolutions"].append(dict(entry))
        self.write_manifest()

    def record_measures(self, name: str, values: Mapping[int, Any]) -> None:
        """Set field ``name`` of recorded resolutions, ``{resolution: value}`` (a measure
        taken after them)."""
        for entry in self.manifest["resolutions"]:
            if entry["resolution"] in values:
                entry[name] = values[entry["resolution"]]
        self.write_manifest()

    def record_outcome(self, **fields: Any) -> None:
        """Record how this invocation ended (status, stopped_reason, ...)."""
        self.manifest.update(fields)
        self.write_manifest()

    def write_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2, sort_keys=True).encode()
        atomic_write_bytes(self.path / MANIFEST, data)
