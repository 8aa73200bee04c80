"""The Prefect task runner of the flows: tasks in the flow process, blocks on Dask.

Imported by the flows only (it imports prefect, which the ``layered`` command imports once
the Prefect API is chosen).
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from layered.cluster import close_cluster, cluster_client

__all__ = ["ClusterTaskRunner"]


class ClusterTaskRunner(ThreadPoolTaskRunner):  # type: ignore[type-arg]
    """Prefect tasks in the flow process, their blocks on a Dask cluster.

    A task called in a flow runs in the flow's process (``task.submit`` on a thread), as a
    Prefect task run like any other; what it fans out (:func:`layered.tasks.fanout.fan_out`)
    runs as plain Dask tasks through :attr:`client`, one long-lived client per scheduler.
    So a resolution costs one Prefect task run (a few milliseconds), and a block one Dask
    task (about a millisecond), where a Prefect task on a Dask worker costs hundreds.

    Parameters
    ----------
    address : str or None
        Scheduler to run on; None starts a LocalCluster (``cluster_kwargs``) for the flow
        run and closes it after.
    timeout : float
        Seconds to wait for the scheduler to answer (then for a lost one to come back).
    """

    def __init__(self, address: str | None = None, cluster_kwargs: dict[str, Any] | None = None,
                 timeout: float = 10.0) -> None:
        super().__init__()
        self.address = address
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.timeout = timeout
        self._cluster: Any = None

    def duplicate(self) -> ClusterTaskRunner:
        return type(self)(self.address, self.cluster_kwargs, self.timeout)

    @property
    def client(self) -> Any:
        """The client of the runner's scheduler (a LocalCluster started now if none)."""
        if self.address is None:
            from distributed import LocalCluster

            self._cluster = LocalCluster(**self.cluster_kwargs)
            self.address = self._cluster.scheduler_address
        assert self.address is not None
        return cluster_client(self.address, self.timeout)

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self._cluster is not None:
                close_cluster(self._cluster)
                self._cluster = None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ClusterTaskRunner) and self.address == other.address
                and self.cluster_kwargs == other.cluster_kwargs)

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_cluster": None}
