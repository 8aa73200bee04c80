"""The stream model (METHOD §5): load split, FIFO service, deadline rules, reported figures."""

import numpy as np
import pytest

from layered.data.idx import read_idx
from layered.data.stream_jobs import ImageJobs, SyntheticJobs, stream_jobs
from layered.layering.stream import (
    StreamModel,
    draw_stream,
    load_split,
    md1_bound,
    resolution_offsets,
    serve_fifo,
    simulate_stream,
)


@pytest.fixture(scope="module")
def paper_run():
    """The paper's defaults (J = 10,000), simulated once for the whole module."""
    return simulate_stream(StreamModel(seed=0))


def expected_bound(model, cumulative_shares):
    """W_q + F_r S with the pooled cluster, written out from METHOD §5's formulas."""
    total_speed = 4 * model.work * model.rate  # Σμ = 4Zλ
    service = model.work / total_speed  # S = Z/Σμ
    rho = model.rate * model.work / total_speed
    wait = model.rate * service**2 / (2 * (1 - rho))
    return wait + np.asarray(cumulative_shares) * service


# ---------------------------------------------------------------------------- load split
@pytest.mark.parametrize("gamma", [0.0, 0.05, 1.0, 10.0])
def test_load_split_equalises_mean_plus_gamma_second_moment(gamma):
    theta = np.random.default_rng(3).uniform(0.01, 2.0, size=7)
    split = load_split(theta, 1000, gamma)
    k = split.continuous
    # E[T] + γE[T²] of a Gamma(κ, θ) time, from its moments: κθ + γ(κθ² + (κθ)²).
    objective = k * theta + gamma * (k * theta**2 + (k * theta) ** 2)
    assert np.ptp(objective) <= 1e-9 * objective.max()
    assert objective == pytest.approx(np.full(7, split.level), rel=1e-9)
    assert k.sum() == pytest.approx(1000, rel=1e-12)
    assert split.tasks.sum() == 1000
    assert np.all(np.abs(split.tasks - k) < 1)


def test_load_split_gives_slower_workers_fewer_tasks_and_is_proportional_without_gamma():
    theta = np.array([0.5, 1.0, 2.0])
    assert load_split(theta, 700, gamma=0.0).tasks.tolist() == [400, 200, 100]
    tasks = load_split(theta, 700, gamma=1.0).tasks
    assert tasks[0] > tasks[1] > tasks[2] and tasks.sum() == 700


def test_load_split_row_ranges_tile_the_rows_in_worker_order():
    split = load_split([1.0, 2.0, 1.0], 10, gamma=0.0)
    assert split.row_ranges() == [(0, 4), (4, 6), (6, 10)]


@pytest.mark.parametrize(
    "theta, tasks, gamma",
    [([], 10, 1.0), ([1.0, 0.0], 10, 1.0), ([1.0, np.nan], 10, 1.0), ([1.0], 0, 1.0),
     ([1.0], 10, -1.0)],
)
def test_load_split_rejects_bad_input(theta, tasks, gamma):
    with pytest.raises(ValueError):
        load_split(theta, tasks, gamma)


# ---------------------------------------------------------------------------- draws
def test_speeds_are_normalised_to_four_z_lambda():
    model = StreamModel(seed=5)
    draws = draw_stream(model)
    assert draws.speeds.sum() == pytest.approx(4 * model.work * model.rate)
    assert model.service_time == pytest.approx(25.0)
    assert np.all(draws.speeds > 0)


def test_round_times_have_the_moments_of_a_sum_of_exponential_tasks():
    model = StreamModel(jobs=20_000, seed=2)
    draws = draw_stream(model, raw_speeds=[1.0, 2.0, 3.0, 4.0, 5.0])
    kappa, theta = draws.split.tasks, model.task_work / draws.speeds
    for rounds, share in ((draws.layered[:, 1, :], 0.25), (draws.one_shot[:, 0, :], 1.0)):
        mean, var = kappa * share * theta, kappa * (share * theta) ** 2
        assert rounds.mean(axis=0) == pytest.approx(mean, rel=0.01)
        assert rounds.var(axis=0) == pytest.approx(var, rel=0.06)


def test_same_seed_same_stream_and_seeds_differ():
    a, b = draw_stream(StreamModel(jobs=50, seed=9)), draw_stream(StreamModel(jobs=50, seed=9))
    c = draw_stream(StreamModel(jobs=50, seed=10))
    assert np.array_equal(a.layered, b.layered) and np.array_equal(a.arrivals, b.arrivals)
    assert not np.array_equal(a.speeds, c.speeds)


def test_resolution_offsets_barrier_and_pipelined():
    rounds = np.random.default_rng(0).exponential(size=(200, 4, 5))
    barrier = resolution_offsets(rounds)
    pipelined = resolution_offsets(rounds, pipelined=True)
    assert np.allclose(barrier, np.cumsum(rounds.max(axis=2), axis=1))
    assert np.allclose(pipelined, np.cumsum(rounds, axis=1).max(axis=2))
    assert np.all(pipelined <= barrier + 1e-12)


# ---------------------------------------------------------------------------- FIFO by hand
def test_published_rule_on_a_hand_computed_stream():
    # Three jobs, resolutions end 2, 4, 6 slots after service starts; D = 1.
    rec = serve_fifo([0.0, 3.0, 20.0], [[2.0, 4.0, 6.0]] * 3, [1.0, np.inf], "published")
    # Job 0: at 4 job 1 waits and 4 > D: cut after resolution 2 (which fails), ends at 4.
    # Job 1 starts at 4, nobody waits for it; job 2 is last.
    assert rec.success[:, :, 0].tolist() == [[True, False, False], [True] * 3, [True] * 3]
    assert rec.start[:, 0].tolist() == [0.0, 4.0, 20.0]
    assert rec.delays[1, :, 0].tolist() == [3.0, 5.0, 7.0]
    # Without deadline job 1 waits for job 0's 6 slots.
    assert rec.start[:, 1].tolist() == [0.0, 6.0, 20.0]
    assert rec.delays[1, :, 1].tolist() == [5.0, 7.0, 9.0]


def test_absolute_rule_on_a_hand_computed_stream():
    rec = serve_fifo([0.0, 3.0, 20.0], [[2.0, 4.0, 6.0]] * 3, [5.0], "absolute")
    # Job 0 is stopped at 5 (resolution 3 would end at 6); job 1 starts at 5, deadline 8.
    assert rec.success[:, :, 0].tolist() == [[True, True, False], [True, False, False],
                                             [True, True, False]]
    assert rec.start[:, 0].tolist() == [0.0, 5.0, 20.0]
    assert np.isnan(rec.completion[0, 2, 0]) and rec.completion[1, 0, 0] == 7.0


def test_serve_fifo_rejects_bad_input():
    with pytest.raises(ValueError, match="offsets must have shape"):
        serve_fifo([0.0, 1.0], [[1.0]], [1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        serve_fifo([1.0, 0.0], [[1.0], [1.0]], [1.0])
    with pytest.raises(ValueError, match="deadlines"):
        serve_fifo([0.0], [[1.0]], [-1.0])
    with pytest.raises(ValueError, match="unknown deadline rule"):
        serve_fifo([0.0], [[1.0]], [1.0], "soft")


# ---------------------------------------------------------------------------- the paper's run
def test_mean_delays_lie_above_the_md1_bound_and_near_it(paper_run):
    model = paper_run.model
    bound = expected_bound(model, [0.25, 0.5, 0.75, 1.0])
    assert np.round(bound, 2).tolist() == [10.42, 16.67, 22.92, 29.17]  # METHOD §5
    assert md1_bound(model) == pytest.approx(bound)
    means = paper_run.layered.mean_delays
    assert np.all(means >= bound)
    assert np.all(means < 2.5 * bound)
    assert np.all(np.diff(means) > 0)
    no_layering = paper_run.one_shot.mean_delays[0]
    assert bound[-1] <= no_layering < 2.5 * bound[-1]


def test_anti_diagonal_variant_has_rounds_of_a_quarter_a_half_and_a_quarter():
    model = StreamModel(jobs=3000, layering="anti-diagonal", seed=4)
    assert model.fractions == (0.25, 0.5, 0.25)
    sim = simulate_stream(model, deadlines=[10.0])
    bound = expected_bound(model, [0.25, 0.75, 1.0])
    assert sim.layered.delays.shape == (3000, 3)
    assert np.all(sim.layered.mean_delays >= bound)
    assert np.all(sim.layered.mean_delays < 2.5 * bound)


def test_success_rises_to_one_for_long_deadlines_under_both_rules():
    model = StreamModel(jobs=3000, seed=1)
    for rule in ("published", "absolute"):
        sim = simulate_stream(model, deadlines=[0.0, 10.0, 1e9], rule=rule)
        assert np.all(sim.layered.success[:, -1] == 1.0)
        assert sim.one_shot.success[0, -1] == 1.0
        assert np.all(sim.layered.success[:, 0] < 1.0)


def test_absolute_deadline_success_is_monotone_in_d_for_every_job(paper_run):
    draws = paper_run.draws
    rec = serve_fifo(draws.arrivals, resolution_offsets(draws.layered), np.arange(31.0),
                     "absolute")
    assert np.all(np.diff(rec.success.astype(int), axis=2) >= 0)


def test_published_success_rates_are_monotone_in_d_but_for_a_small_queueing_dip(paper_run):
    # A shorter deadline cuts more jobs, so fewer find someone waiting later: the rule's
    # success dips by under a percentage point where D passes a resolution's length.
    rates = np.vstack([paper_run.layered.success, paper_run.one_shot.success])
    assert np.all(np.diff(rates, axis=1) >= -0.01)
    assert np.all(rates[:, -1] >= rates[:, 0])
    # Earlier resolutions are at least as likely to make any deadline as later ones.
    assert np.all(np.diff(paper_run.layered.success, axis=0) <= 0)


def test_summary_has_the_fixed_fields(paper_run):
    summary = paper_run.summary()
    assert summary["mode"] == "simulate"
    assert summary["deadlines"] == list(range(31))
    assert [r["resolution"] for r in summary["resolutions"]] == [1, 2, 3, 4]
    for row in [*summary["resolutions"], summary["no_layering"]]:
        assert len(row["success"]) == 31 and row["mean_delay"] > 0
    assert summary["resolutions"][0]["mean_delay"] == pytest.approx(
        float(np.mean(paper_run.layered.delays[:, 0]))
    )


def test_model_rejects_bad_parameters():
    with pytest.raises(ValueError, match="utilisation"):
        StreamModel(utilisation=1.0)
    with pytest.raises(ValueError, match="layering"):
        StreamModel(layering="shells")
    with pytest.raises(ValueError, match="jobs"):
        StreamModel(jobs=0)


# ---------------------------------------------------------------------------- real jobs
def test_synthetic_jobs_are_seeded_per_job_and_fit_their_partition():
    source = SyntheticJobs(rows=50, cols=20, seed=3)
    jobs = stream_jobs([1.0, 2.0, 3.0], source)
    again = SyntheticJobs(rows=50, cols=20, seed=3).operands(1)
    assert np.array_equal(jobs[1].matrix, again[0]) and np.array_equal(jobs[1].vector, again[1])
    assert not np.array_equal(jobs[0].matrix, jobs[1].matrix)
    for job in jobs:
        for a in (job.matrix, job.vector):
            assert np.array_equal(source.partition.truncate(a), a)  # on the grid, in range


def test_image_jobs_take_consecutive_mnist_images(shared_mnist_dir):
    images = read_idx(shared_mnist_dir / "t10k-images-idx3-ubyte.gz").reshape(10_000, -1)
    source = ImageJobs.from_mnist(shared_mnist_dir, rows=4000)
    matrix, vector = source.operands(2)
    assert np.array_equal(matrix[:2000], images[8000:])
    assert np.array_equal(matrix[2000:], images[:2000])
    assert vector.shape == (784, 1)
    assert np.array_equal(source.partition.truncate(vector), vector)
    assert np.array_equal(source.partition.truncate(matrix), matrix)
