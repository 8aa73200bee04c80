"""Deployments of the pipelines with nightly schedules (``layered deploy``)."""

from .nightly import DEPLOYMENT_NAME, ensure_process_pool, pipelines, register_deployments

__all__ = ["DEPLOYMENT_NAME", "ensure_process_pool", "pipelines", "register_deployments"]
