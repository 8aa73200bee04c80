"""A real stream on a LocalCluster: exact resolutions, FIFO service, deadlines honoured,
and the stream flow end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
from distributed import Client

from layered.data.stream_jobs import SyntheticJobs
from layered.layering.stream import StreamModel
from layered.tasks.stream import plan_stream, run_stream, run_stream_pass

# Fast enough for a test: a slot is 10 ms and a job's pooled service S = ρ/λ = 5 slots,
# so a round lasts about 12 ms plus what Dask adds; jobs arrive every 20 slots on average.
TIME_SCALE = 0.01
DEADLINE = 3.0  # slots: cuts jobs after their second resolution when the next one waits


@pytest.fixture(scope="module")
def client(local_cluster_address):
    """A client of the session's LocalCluster (two process workers named 0 and 1)."""
    with Client(local_cluster_address) as c:
        yield c


@pytest.fixture(scope="module")
def plan(client):
    model = StreamModel(jobs=10, rate=0.05, tasks=120, workers=2, seed=11)
    return plan_stream(client, model, SyntheticJobs(rows=120, cols=48, seed=11), TIME_SCALE,
                       slowdowns={"1": 3.0})


@pytest.fixture(scope="module")
def run(client, plan):
    return run_stream(client, plan, deadlines=[DEADLINE], rule="published")


def reference_estimate(job, plan, r):
    """Σ W_i x_j over the pairs of resolutions 1..r, from the plain components."""
    p = plan.partition
    w, x = p.split(job.matrix), p.split(job.vector)
    pairs = [pair for group in plan.layered.groups[:r] for pair in group]
    return sum(w[i] @ x[j] for i, j in pairs)


def test_slowed_worker_gets_fewer_rows(plan):
    assert plan.names == ("0", "1") and plan.slowdowns == (1.0, 3.0)
    assert plan.draws.speeds[0] == pytest.approx(3 * plan.draws.speeds[1])
    assert plan.draws.split.tasks[0] > plan.draws.split.tasks[1]
    assert plan.draws.split.tasks.sum() == 120


def test_every_resolution_is_exact_and_the_last_is_the_truncated_product(run, plan):
    free = run.layered[0]
    assert free.success.all()
    p = plan.partition
    for job, estimates in zip(plan.jobs, free.estimates, strict=True):
        assert len(estimates) == 4
        for r, estimate in enumerate(estimates, start=1):
            assert np.array_equal(estimate, reference_estimate(job, plan, r))
        one_shot = p.truncate(job.matrix) @ p.truncate(job.vector)
        assert np.array_equal(estimates[-1], one_shot)


def test_delays_grow_with_resolution_and_jobs_are_served_in_order(run):
    for record in (*run.layered, *run.one_shot):
        for delays in record.delays:
            reached = delays[~np.isnan(delays)]
            assert np.all(np.diff(reached) > 0) and np.all(reached > 0)
        assert np.all(record.start >= record.arrival)
        assert np.all(record.end >= np.nanmax(record.completion, axis=1, initial=0.0))
        assert np.all(record.start[1:] >= record.end[:-1])


def test_published_rule_keeps_only_resolutions_it_allowed(run, plan):
    cut = run.layered[1]
    limit = DEADLINE * plan.time_scale
    following = np.append(cut.arrival[1:], math.inf)
    for j in range(len(plan.jobs)):
        ended = cut.completion[j][cut.success[j]]
        # A kept resolution ended with nobody waiting, or within D of the service start.
        assert np.all((following[j] > ended) | (ended - cut.start[j] <= limit))
        assert np.all(np.diff(cut.success[j].astype(int)) <= 0)  # failures are a suffix
        # Whatever resolution a job reached, its estimate is that resolution's, exactly.
        reached = cut.estimates[j]
        assert np.array_equal(reached[-1], reference_estimate(plan.jobs[j], plan, len(reached)))
    assert not cut.success.all()


def test_summary_has_the_fixed_fields_in_seconds_with_its_simulation(run):
    summary = run.summary()
    assert summary["mode"] == "dask"
    assert summary["deadlines"] == [pytest.approx(DEADLINE * TIME_SCALE)]
    assert [r["resolution"] for r in summary["resolutions"]] == [1, 2, 3, 4]
    assert all(len(r["success"]) == 1 for r in summary["resolutions"])
    assert len(summary["no_layering"]["success"]) == 1
    means = [r["mean_delay"] for r in summary["resolutions"]]
    simulated = [r["mean_delay"] for r in summary["simulation"]["resolutions"]]
    # The cluster only adds time to the model's draws: real delays are at least simulated.
    assert np.all(np.array(means) >= np.array(simulated) - 1e-9)


def test_absolute_deadline_fails_what_ends_late(client):
    # Slots of 30 ms: a first resolution (1.0-1.6 slots of work here) ends within the
    # 4-slot deadline even with Dask's round trip on a loaded machine (10 ms slots left it
    # only 24-30 ms), while a whole job (at least 4.8 slots of work) never fits.
    model = StreamModel(jobs=6, rate=0.05, tasks=120, workers=2, seed=11)
    plan = plan_stream(client, model, SyntheticJobs(rows=120, cols=48, seed=11), 0.03,
                       slowdowns={"1": 3.0})
    assert plan.draws.layered.max(axis=2).sum(axis=1).min() > 4.0
    record = run_stream_pass(client, plan, deadline=4.0, rule="absolute")
    deadline_s = 4.0 * plan.time_scale
    ended = np.where(record.success, record.completion, -np.inf)
    assert np.all(ended <= record.arrival[:, None] + deadline_s)
    assert record.success[:, 0].any()
    assert not record.success[:, -1].any()  # a whole job (5 slots of work) never fits in 4
    served = ~np.isnan(record.start)  # the others could only start after their deadline
    assert np.all(record.start[1:][served[1:]] >= np.nan_to_num(record.end[:-1][served[1:]]))


def test_absolute_deadline_stops_a_running_mini_job(client, plan):
    # Two jobs whose every round lasts 50 slots (0.5 s), under a deadline of 10 slots.
    long_rounds = dataclasses.replace(plan.draws, layered=np.full((2, 4, 2), 50.0))
    slow = dataclasses.replace(plan, jobs=plan.jobs[:2], draws=long_rounds)
    record = run_stream_pass(client, slow, deadline=10.0, rule="absolute")
    assert not record.success.any()
    assert [len(e) for e in record.estimates] == [0, 0]
    # Each job frees the cluster at its deadline (0.1 s), not when its round would end.
    assert np.all(record.end - record.arrival < 0.1 + 0.15)


def test_plan_rejects_mismatches(client):
    source = SyntheticJobs(rows=10, cols=4)
    with pytest.raises(ValueError, match="cluster has 2"):
        plan_stream(client, StreamModel(jobs=2, tasks=10, workers=3), source, 0.01)
    with pytest.raises(ValueError, match="unknown worker"):
        plan_stream(client, StreamModel(jobs=2, tasks=10, workers=2), source, 0.01, {"w9": 2})
    with pytest.raises(ValueError, match="rows"):
        plan_stream(client, StreamModel(jobs=2, tasks=11, workers=2), source, 0.01)


def test_stream_flow_simulated_writes_summary_plots_and_artifacts(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    from layered.flows.stream import stream_flow

    summary = stream_flow(simulate=True, jobs=400, deadlines=[0.0, 10.0, 30.0],
                          out_dir=str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["mode"] == "simulate" and summary["deadlines"] == [0, 10, 30]
    for name in ("delay_cdf.png", "success.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {f"stream-simulate-resolution-{r}" for r in (1, 2, 3, 4)} <= keys
    assert {"stream-simulate-resolution-no-layering", "stream-simulate-summary"} <= keys


def test_stream_flow_on_dask_compares_with_its_own_simulation(local_cluster_address, tmp_path):
    from layered.flows.stream import stream_flow

    summary = stream_flow(jobs=4, rate=0.05, tasks=60, cols=16, time_scale=TIME_SCALE,
                          slowdowns={"1": 2.0}, deadlines=[DEADLINE],
                          address=local_cluster_address, out_dir=str(tmp_path))
    assert summary["mode"] == "dask" and summary["workers"] == ["0", "1"]
    assert summary["slowdowns"] == [1.0, 2.0]
    assert len(summary["simulation"]["resolutions"]) == 4
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
