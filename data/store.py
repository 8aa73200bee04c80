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
]

MANIFEST = "manifest.json"
FORMAT = 1
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
            shutil.rmtree(run.staging, ignore_errors=True)  # left by a run that crashed
            run.staging.mkdir()
            run.write_manifest()
            yield run


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
        self.staging = path / ".staging"

    @property
    def run_id(self) -> str:
        return self.path.name

    def completed_resolutions(self) -> list[dict[str, Any]]:
        """Manifest entries of the completed resolutions, in order."""
        return list(self.manifest["resolutions"])

    def stage_array(self, name: str, shape: tuple[int, ...], dtype: str) -> str:
        """Create a ``.npy`` file under ``.staging`` for workers to fill by rows."""
        path = self.staging / f"{name}.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        arr.flush()
        del arr
        return str(path)

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

    def record_outcome(self, **fields: Any) -> None:
        """Record how this invocation ended (status, stopped_reason, ...)."""
        self.manifest.update(fields)
        self.write_manifest()

    def write_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2, sort_keys=True).encode()
        atomic_write_bytes(self.path / MANIFEST, data)
