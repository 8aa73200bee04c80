"""Nightly deployments of the pipelines on a process work pool, registered by one call.

Each deployment names its flow by module path (``layered.flows.matmul.matmul_flow``), so a
worker with this package installed runs it with no pull step (no git clone, no network),
and carries the store, the Dask address and the MNIST data in its job environment.

Examples
--------
``layered deploy`` calls::

    register_deployments(Settings.from_env(), pool="layered-process", cron="0 2 * * *")

then ``prefect worker start --pool layered-process`` runs the scheduled flow runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layered.settings import Settings

__all__ = ["DEPLOYMENT_NAME", "register_deployments", "ensure_process_pool", "pipelines"]

DEPLOYMENT_NAME = "nightly"


def pipelines() -> list[tuple[Any, dict[str, Any]]]:
    """The flows to deploy and their default parameters (each pipeline's embedded default)."""
    from layered.flows.matmul import matmul_flow
    from layered.flows.mnist import mnist_flow

    return [(matmul_flow, {}), (mnist_flow, {})]


def ensure_process_pool(pool: str) -> None:
    """Create the ``process`` work pool ``pool`` unless it exists (of any type: kept)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def register_deployments(
    settings: Settings, pool: str, cron: str, parameters: dict[str, Any] | None = None
) -> list[str]:
    """Register every pipeline as ``<flow name>/nightly`` on ``pool`` with ``cron``.

    Parameters
    ----------
    settings : Settings
        ``store``, ``dask_address`` and ``timezone`` go into the deployments.
    pool : str
        Process work pool (created if missing).
    cron : str
        Cron schedule, in ``settings.timezone``.
    parameters : dict, optional
        Parameters overriding each flow's defaults (the same for every pipeline).

    Returns
    -------
    list of str
        The full names of the registered deployments.
    """
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    ensure_process_pool(pool)
    # A data directory as an absolute path: the worker runs flows from its own directory.
    data = Path(settings.mnist_data)
    env = {"LAYERED_STORE": str(settings.store),
           "LAYERED_MNIST_DATA": str(data.resolve()) if data.is_dir() else settings.mnist_data}
    if settings.dask_address:
        env["LAYERED_DASK_ADDRESS"] = settings.dask_address
    names = []
    for flow, defaults in pipelines():
        deployment = flow.to_deployment(
            name=DEPLOYMENT_NAME,
            schedules=[Cron(cron, timezone=settings.timezone)],
            parameters={**defaults, **(parameters or {})},
            work_pool_name=pool,
            job_variables={"env": env},
            entrypoint_type=EntrypointType.MODULE_PATH,
            tags=["layered", "nightly"],
            description=f"Nightly {flow.name} run ({cron}, {settings.timezone}).",
        )
        deployment.apply()
        names.append(f"{flow.name}/{DEPLOYMENT_NAME}")
    return names
