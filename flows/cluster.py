"""The Dask cluster a run uses: an existing scheduler (checked first) or a LocalCluster.

A LocalCluster with process workers re-imports the main module in every worker, so a
script that starts one needs the ``if __name__ == "__main__":`` guard (the ``layered``
console script has it). Workers bind to 127.0.0.1 and start no dashboard.

Examples
--------
>>> from layered.settings import Settings
>>> dask_task_runner(Settings(dask_address="tcp://127.0.0.1:8786")).address
'tcp://127.0.0.1:8786'
"""

from __future__ import annotations

from typing import Any

from layered.settings import Settings

__all__ = ["SchedulerUnreachableError", "check_scheduler", "local_cluster", "dask_task_runner"]


class SchedulerUnreachableError(RuntimeError):
    """No Dask scheduler answered at the given address in time."""


def check_scheduler(address: str, timeout: float) -> int:
    """Connect to the scheduler at ``address``; return its number of workers.

    Raises
    ------
    SchedulerUnreachableError
        If nothing answers within ``timeout`` seconds (or the address is malformed).
    """
    from distributed import Client

    try:
        with Client(address, timeout=timeout, set_as_default=False) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerUnreachableError(
            f"no Dask scheduler answered at {address!r} within {timeout:g} s ({exc});"
            " start one (`dask scheduler` and `dask worker ADDRESS`) or leave out --address"
            " (and LAYERED_DASK_ADDRESS) to run on a local cluster"
        ) from exc


def _local_cluster_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "n_workers": settings.n_workers,
        "threads_per_worker": settings.threads_per_worker,
        "processes": True,
        "dashboard_address": None,
        # Without a dashboard the scheduler still serves /health on an HTTP port, 8787
        # unless told otherwise (and a warning when 8787 is taken): any free local port.
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
        "host": "127.0.0.1",
        # Workers import the tasks (and prefect, ~2 s) as they start, not at the first task.
        "preload": ["layered.tasks.matmul"],
    }


def local_cluster(settings: Settings) -> Any:
    """A LocalCluster of ``settings.n_workers`` process workers (a context manager)."""
    from distributed import LocalCluster

    return LocalCluster(**_local_cluster_kwargs(settings))


def dask_task_runner(settings: Settings, address: str | None = None) -> Any:
    """The Prefect DaskTaskRunner for ``address`` (default ``settings.dask_address``).

    With no address, the runner starts a LocalCluster for the flow run and closes it after.
    """
    from prefect_dask import DaskTaskRunner

    address = address or settings.dask_address
    if address:
        timeout = {"timeout": settings.scheduler_timeout_s}
        return DaskTaskRunner(address=address, client_kwargs=timeout)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=_local_cluster_kwargs(settings)
    )
