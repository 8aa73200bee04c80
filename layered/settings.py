"""One place for configuration defaults, overridable by environment variables and CLI flags.

Every field of :class:`Settings` has a default here; the environment variable
``LAYERED_<FIELD>`` (upper case) overrides it, and the CLI's flags override both. Tuples are
written as comma- or space-separated integers.

Examples
--------
>>> s = Settings.from_env({"LAYERED_SHAPE": "64,32,8", "LAYERED_N_WORKERS": "3"})
>>> s.shape, s.n_workers, s.seed
((64, 32, 8), 3, 0)
>>> s.replace(seed=7).seed
7
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Settings", "SettingsError", "user_data_dir", "RealRunDefaults", "REAL_DEFAULTS"]

ENV_PREFIX = "LAYERED_"


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def user_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/layered`` (default ``~/.local/share/layered``)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "layered"


@dataclass(frozen=True)
class Settings:
    """Defaults for every run, deployment and server the ``layered`` command starts.

    Attributes
    ----------
    store : Path
        Where runs persist (one directory per run id).
    prefect_home : Path
        ``PREFECT_HOME`` of the embedded Prefect server (its SQLite database and logs).
    dask_address : str or None
        ``tcp://HOST:PORT`` of an existing Dask scheduler; None starts a LocalCluster.
    n_workers, threads_per_worker : int
        Size of the LocalCluster (process workers, bound to 127.0.0.1).
    scheduler_timeout_s : float
        How long to wait for a scheduler at ``dask_address`` before giving up.
    server_timeout_s : float
        How long to wait for the embedded Prefect server to answer ``/api/health``.
    shape : (M, K, N)
        Size of the synthetic matmul operands ``W`` (M x K) and ``X`` (K x N).
    seed : int
        Seed of the synthetic operands.
    value_bits : int
        Synthetic operands are integers of this many bits, two's complement range.
    bits : tuple of int
        Magnitude bits of each component (most significant first) for partitions chosen
        from the data.
    float_bits : tuple of int
        The same for operand files holding non-integer values, which get one partition
        per row of W and per column of X: 8 slices of 7 bits reach float64 accuracy.
    ordering : str
        Which component products each resolution adds.
    block_rows : int
        Rows of W per Dask block inside a resolution task; a deadline is honoured within
        one block's duration.
    error_check_limit : int
        ``max_abs_error`` against the one-shot product is measured when ``M*K*N`` is at
        most this.
    torch_min_work : int
        Under ``--kernel auto``, a run uses the torch kernel only when its products
        have at least this many multiply-adds (``M*K*N`` for a matmul): below it, loading
        torch on each worker (about 1.5 s of CPU) costs more than its int8 products save,
        so the run takes numpy. The library's ``kernel="auto"`` does not look at it.
    mnist_data : str
        MNIST-format data of the mnist and train pipelines: a directory, or ``"mnist"``
        (the official files, downloaded once into the user cache and verified).
    mnist_task : str
        ``"even-odd"`` (the paper's binary model) or ``"digits"`` (10 classes).
    chunk_size : int
        Samples per Dask block of the mnist pipeline; a deadline is honoured within one
        chunk's duration.
    work_pool : str
        Process work pool the deployments run on.
    cron : str
        Nightly schedule of the deployments.
    timezone : str
        Time zone of the cron schedule.
    """

    store: Path = field(default_factory=lambda: user_data_dir() / "runs")
    prefect_home: Path = field(default_factory=lambda: user_data_dir() / "prefect")
    dask_address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    scheduler_timeout_s: float = 10.0
    server_timeout_s: float = 120.0
    shape: tuple[int, int, int] = (2048, 2048, 512)
    seed: int = 0
    value_bits: int = 8
    bits: tuple[int, ...] = (4, 4)
    float_bits: tuple[int, ...] = (7,) * 8
    ordering: str = "anti-diagonal"
    block_rows: int = 512
    error_check_limit: int = 2**33
    torch_min_work: int = 2**36
    mnist_data: str = "mnist"
    mnist_task: str = "even-odd"
    chunk_size: int = 2000
    work_pool: str = "layered-process"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by every ``LAYERED_<FIELD>`` variable present in ``env``.

        Raises
        ------
        SettingsError
            If a variable cannot be parsed as its setting's type.
        """
        env = os.environ if env is None else env
        base = cls(store=user_data_dir(env) / "runs", prefect_home=user_data_dir(env) / "prefect")
        updates: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                updates[f.name] = _parse(name, env[name], _PARSERS[f.name])
        return base.replace(**updates)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied; None values leave the current setting."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(",", " ").split())


def _optional_str(text: str) -> str | None:
    return text or None


_PARSERS: dict[str, Callable[[str], object]] = {
    "store": Path,
    "prefect_home": Path,
    "dask_address": _optional_str,
    "n_workers": int,
    "threads_per_worker": int,
    "scheduler_timeout_s": float,
    "server_timeout_s": float,
    "shape": _int_tuple,
    "seed": int,
    "value_bits": int,
    "bits": _int_tuple,
    "float_bits": _int_tuple,
    "ordering": str,
    "block_rows": int,
    "error_check_limit": int,
    "torch_min_work": int,
    "mnist_data": str,
    "mnist_task": str,
    "chunk_size": int,
    "work_pool": str,
    "cron": str,
    "timezone": str,
}


def _parse(name: str, text: str, parser: Callable[[str], object]) -> object:
    try:
        return parser(text)
    except ValueError as exc:
        raise SettingsError(f"environment variable {name}={text!r} is invalid: {exc}") from exc


@dataclass(frozen=True)
class RealRunDefaults:
    """Defaults of a real run of the stream experiment (a simulation uses those of
    :class:`~layered.layering.stream.StreamModel`, the paper's).

    A slot of 20 ms makes a round of a job (S/4 = 6.25 slots) last about 125 ms, well
    above the 10-20 ms a Dask round trip costs on a small machine.
    """

    jobs: int = 30
    time_scale: float = 0.02
    cols: int = 256
    deadlines: tuple[float, ...] = (10.0,)


REAL_DEFAULTS = RealRunDefaults()
