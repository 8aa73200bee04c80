"""Deployments: registered with their nightly cron schedules; a process worker runs one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from layered.data.operands import synthetic_operands
from layered.deployments import DEPLOYMENT_NAME, register_deployments
from layered.layering import Partition, layered_matmul
from layered.settings import Settings

pytestmark = pytest.mark.slow


def _read(deployment_name, pool):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(deployment_name), client.read_work_pool(pool)


def test_deployments_are_registered_with_their_nightly_cron_schedules(prefect_api, tmp_path):
    settings = Settings(store=tmp_path / "runs", timezone="Europe/Paris")
    names = register_deployments(settings, pool="nightly-pool", cron="30 1 * * *")
    assert names == [f"layered-{p}/{DEPLOYMENT_NAME}" for p in ("matmul", "mnist")]
    for name, pipeline in zip(names, ("matmul", "mnist"), strict=True):
        deployment, pool = _read(name, "nightly-pool")
        assert pool.type == "process"
        assert deployment.work_pool_name == "nightly-pool"
        (schedule,) = deployment.schedules
        assert schedule.active
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 1 * * *",
                                                                        "Europe/Paris")
        assert deployment.entrypoint == f"layered.flows.{pipeline}.{pipeline}_flow"
        assert not deployment.pull_steps  # nothing to fetch over a network
        assert deployment.job_variables["env"]["LAYERED_STORE"] == str(tmp_path / "runs")


def test_a_process_worker_runs_the_deployment_once(prefect_api, local_cluster_address, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    store = tmp_path / "runs"
    settings = Settings(store=store, dask_address=local_cluster_address)
    name = register_deployments(settings, pool="run-pool", cron="0 2 * * *")[0]  # matmul
    flow_run = run_deployment(
        name, parameters={"shape": [64, 48, 16], "seed": 2, "run_id": "deployed"}, timeout=0
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "run-pool", "--run-once"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_completed(), (state, worker.stdout[-3000:])
    manifest = json.loads((store / "deployed" / "manifest.json").read_text())
    assert [r["resolution"] for r in manifest["resolutions"]] == [1, 2, 3]
    W, X = synthetic_operands((64, 48, 16), seed=2)
    final = list(layered_matmul(W, X, Partition((8, 4, 0)), Partition((8, 4, 0))))[-1]
    assert np.array_equal(np.load(store / "deployed" / "resolution-3" / "estimate.npy"),
                          final.estimate)
