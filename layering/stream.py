"""A stream of distributed matrix-vector jobs with deadlines (METHOD §5), as a vectorised model.

Jobs arrive as a Poisson process and are served first-in first-out, one job at a time,
by ``P`` heterogeneous workers. A job is ``K`` tasks; worker ``p`` gets ``κ_p`` of them
(:func:`load_split`) and runs them one after another, each taking an exponential time of
mean ``work / μ_p``. With layering, every task is refined in ``R`` rounds (one per
resolution) and resolution ``r`` of a job is done when the last worker finishes its round
``r``. A deadline rule (:class:`PublishedDeadline`, :class:`AbsoluteDeadline`) may cut a
job off; the resolutions it did not finish in time count as failures.

Modelling choices, in METHOD's terms (what the source leaves open is marked *ours*):

* **Time** is measured in slots; ``λ`` is in jobs per slot, speeds in work units per slot.
* **Speeds**: raw speeds ``u_p ~ U(0, 1)`` (or ``1 / slowdown_p`` for injected
  heterogeneity), normalised so that ``Σμ_p = λZ/ρ``; with the default utilisation
  ``ρ = 1/4`` this is METHOD's ``Σμ_p = 4Zλ``, and a job's pooled service time is
  ``S = Z/Σμ = ρ/λ = 25`` slots.
* **Task times**: the sum of ``κ`` independent exponentials of mean ``θ`` is exactly
  ``Gamma(κ, θ)``, so each worker's round is sampled in one Gamma draw (exact, vectorised).
  A round of resolution ``r`` is ``κ_p`` tasks of work ``f_r·C`` (``C = Z/K``), with
  ``f_r`` the share of the bit-level work the ordering adds in that resolution
  (:func:`work_fractions`: 1/4 each for one product per resolution with m = 2, R = 4;
  1/4, 1/2, 1/4 for the anti-diagonal ordering, R = 3).
* *(ours)* **The load split** is computed once per job for whole tasks of work ``C`` and
  kept for every resolution (a worker keeps its rows), and for no layering.
* **Resolutions are rounds with a barrier**: round ``r + 1`` of a job starts when its
  resolution ``r`` is complete (the master collects it and decides), so resolution ``r``
  ends at ``Σ_{q≤r} max_p round_pq`` after service starts. This reading reproduces the
  independent re-simulation quoted in METHOD §5 (mean delays near 13, 20, 27, 34).
  *(ours)* ``pipelined=True`` is the what-if where a worker starts its round ``r + 1`` as
  soon as its own round ``r`` ends (resolution ``r`` ends at ``max_p Σ_{q≤r} round_pq``).
  The next job starts when the whole job has ended or was cut off (a cut frees the
  cluster at once).
* **Published deadline rule**: after resolution ``r`` the job is cut off only if the next
  job has already arrived and the time since this job started service exceeds ``D``;
  resolution ``r`` and the later ones fail. A job with nobody waiting always finishes.
* *(ours)* **Absolute deadline**: resolution ``r`` succeeds when it ends by
  ``arrival + D``; the job is stopped at that time (freeing the cluster), and a job that
  would start after it is dropped.
* *(ours)* **Reported**: mean delays (completion − arrival, no deadline) and success
  rates over all ``J`` jobs; the delay distributions plotted over the first 1000 jobs
  (METHOD's choice), all delays being kept in :attr:`StreamOutcome.delays`.

Examples
--------
>>> sim = simulate_stream(StreamModel(jobs=2000, seed=1), deadlines=[10, 1e9])
>>> bool(np.all(sim.layered.mean_delays >= md1_bound(sim.model)))
True
>>> sim.layered.success[:, -1].tolist()
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .ordering import Ordering, resolve_ordering
from .partition import Partition

__all__ = [
    "DEADLINE_RULES",
    "STREAM_LAYERINGS",
    "AbsoluteDeadline",
    "DeadlineRule",
    "LoadSplit",
    "PublishedDeadline",
    "StreamDraws",
    "StreamModel",
    "StreamOutcome",
    "StreamSimulation",
    "deadline_rule",
    "draw_stream",
    "load_split",
    "md1_bound",
    "normalised_speeds",
    "poisson_arrivals",
    "resolution_offsets",
    "serve_fifo",
    "simulate_stream",
    "split_objective",
    "stream_outcome",
    "stream_summary",
    "work_fractions",
]

STREAM_LAYERINGS = ("one-per-resolution", "anti-diagonal")

# Times (scalars or arrays that broadcast together), in slots or seconds alike.
Times = npt.ArrayLike
DEADLINE_RULES = ("published", "absolute")

# METHOD §5 splits every number into m = 2 parts of equal width; only the widths matter
# for the work shares, so a two-part partition of 1-bit components stands for any of them.
_EQUAL_PARTS = Partition((2, 1, 0))


# ---------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class StreamModel:
    """Parameters of the stream experiment; the defaults are the paper's (METHOD §5).

    Parameters
    ----------
    jobs : int
        Number of jobs ``J``.
    rate : float
        Poisson arrival rate ``λ`` (jobs per slot).
    work : float
        Work of one job ``Z`` (units).
    tasks : int
        Tasks per job ``K``; a task's work is ``C = Z/K``.
    workers : int
        Number of workers ``P``.
    gamma : float
        Weight ``γ`` of ``E[T²]`` in the load split (per slot).
    utilisation : float
        ``ρ = λZ/Σμ`` in (0, 1); sets the speed normalisation ``Σμ = λZ/ρ``.
    layering : {"one-per-resolution", "anti-diagonal"}
        Ordering of the ``m = 2`` parts: R = 4 equal rounds, or R = 3 rounds of work
        1/4, 1/2, 1/4.
    pipelined : bool
        Let a worker start its next round without waiting for the other workers (default
        False: a barrier after each resolution).
    seed : int
        Seeds every random draw (speeds, arrivals, task times).

    Examples
    --------
    >>> m = StreamModel()
    >>> m.total_speed, m.service_time, m.task_work, m.fractions
    (2000.0, 25.0, 50.0, (0.25, 0.25, 0.25, 0.25))
    """

    jobs: int = 10_000
    rate: float = 0.01
    work: float = 50_000.0
    tasks: int = 1000
    workers: int = 5
    gamma: float = 1.0
    utilisation: float = 0.25
    layering: str = "one-per-resolution"
    pipelined: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("jobs", "tasks", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("rate", "work"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not (self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        if not 0 < self.utilisation < 1:
            raise ValueError(
                f"utilisation must be in (0, 1) for a stable queue, got {self.utilisation!r}"
            )
        if self.layering not in STREAM_LAYERINGS:
            raise ValueError(f"unknown layering {self.layering!r}; use one of {STREAM_LAYERINGS}")

    @property
    def total_speed(self) -> float:
        """``Σμ_p = λZ/ρ`` (work units per slot)."""
        return self.rate * self.work / self.utilisation

    @property
    def service_time(self) -> float:
        """Pooled service time of one job, ``S = Z/Σμ``."""
        return self.work / self.total_speed

    @property
    def task_work(self) -> float:
        """Work of one task, ``C = Z/K``."""
        return self.work / self.tasks

    @property
    def fractions(self) -> tuple[float, ...]:
        """Share of a job's work in each resolution."""
        order = resolve_ordering(self.layering, _EQUAL_PARTS, _EQUAL_PARTS)
        return work_fractions(order, _EQUAL_PARTS, _EQUAL_PARTS)


def work_fractions(ordering: Ordering, pw: Partition, px: Partition) -> tuple[float, ...]:
    """Share of the bit-level work each resolution adds (a b1 x b2 multiply costs b1*b2).

    Examples
    --------
    >>> p = Partition((8, 4, 0))
    >>> work_fractions(Ordering.anti_diagonal(2, 2), p, p)
    (0.25, 0.5, 0.25)
    """
    costs = [sum(pw.widths[i] * px.widths[j] for i, j in group) for group in ordering.groups]
    total = sum(costs)
    return tuple(c / total for c in costs)


def md1_bound(model: StreamModel) -> np.ndarray:
    """Lower bound on each resolution's mean delay: ``W_q + F_r·S`` with the pooled cluster.

    ``W_q = λS²/(2(1−ρ))`` is the M/D/1 mean wait and ``F_r`` the cumulative work share
    of resolutions ``1..r`` (``r/R`` for equal rounds).

    Examples
    --------
    >>> np.round(md1_bound(StreamModel()), 2).tolist()
    [10.42, 16.67, 22.92, 29.17]
    """
    s, rho = model.service_time, model.utilisation
    wait = model.rate * s**2 / (2 * (1 - rho))
    return wait + np.cumsum(model.fractions) * s


# ---------------------------------------------------------------------------- load split
def split_objective(tasks: npt.ArrayLike, task_times: npt.ArrayLike, gamma: float) -> np.ndarray:
    """``E[T] + γ E[T²]`` for ``T ~ Gamma(κ, θ)``: ``κθ + γ(κθ² + κ²θ²)``."""
    k, t = np.asarray(tasks, dtype=np.float64), np.asarray(task_times, dtype=np.float64)
    return k * t + gamma * (k * t**2 + (k * t) ** 2)


@dataclass(frozen=True)
class LoadSplit:
    """Tasks per worker so that ``E[T_p] + γ E[T_p²]`` is (nearly) equal for every worker.

    Attributes
    ----------
    tasks : ndarray of int
        ``κ_p`` after rounding; sums to ``K``.
    continuous : ndarray
        The real-valued solution before rounding.
    level : float
        The common value ``L`` of ``E[T_p] + γ E[T_p²]`` at the continuous solution.
    task_times : ndarray
        Mean task time ``θ_p = C/μ_p`` of each worker (slots).
    gamma : float
    """

    tasks: np.ndarray
    continuous: np.ndarray
    level: float
    task_times: np.ndarray
    gamma: float

    def row_ranges(self) -> list[tuple[int, int]]:
        """``[start, stop)`` of each worker's tasks when tasks are numbered in worker order."""
        stops = np.cumsum(self.tasks)
        return [(int(b - n), int(b)) for b, n in zip(stops, self.tasks, strict=True)]


def load_split(task_times: npt.ArrayLike, tasks: int, gamma: float = 1.0) -> LoadSplit:
    """Split ``tasks`` over workers with mean task times ``θ_p`` (METHOD §5).

    For a common level ``L`` each worker's ``κ_p`` solves the quadratic
    ``γθ²κ² + θ(1 + γθ)κ − L = 0`` (positive root, written in a cancellation-free form);
    ``Σκ_p(L)`` increases with ``L``, so ``L`` is bisected until ``Σκ_p = K``. The result
    is rounded (largest remainders) so that the integer counts sum to ``K`` exactly.

    Parameters
    ----------
    task_times : array_like
        ``θ_p > 0`` for each worker (the mean time of one task).
    tasks : int
        ``K``, the number of tasks to split.
    gamma : float
        ``γ >= 0``; 0 splits in proportion to speed.

    Raises
    ------
    ValueError
        On an empty or non-positive ``task_times``, ``tasks < 1`` or ``gamma < 0``.

    Examples
    --------
    >>> load_split([1.0, 1.0], 10).tasks.tolist()
    [5, 5]
    >>> load_split([1.0, 2.0], 30, gamma=0.0).tasks.tolist()
    [20, 10]
    """
    theta = np.asarray(task_times, dtype=np.float64).reshape(-1)
    if theta.size == 0 or not np.all(np.isfinite(theta)) or np.any(theta <= 0):
        raise ValueError(f"task_times must be finite and > 0 for every worker, got {theta!r}")
    if tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {tasks}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    lo, hi = 0.0, float(np.max(split_objective(tasks, theta, gamma)))
    # Halving 200 times reaches the float64 resolution of any positive level.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _tasks_at_level(mid, theta, gamma).sum() < tasks else (lo, mid)
    level = hi
    continuous = _tasks_at_level(level, theta, gamma)
    return LoadSplit(_round_to_total(continuous, tasks), continuous, level, theta, float(gamma))


def _tasks_at_level(level: float, theta: np.ndarray, gamma: float) -> np.ndarray:
    a = gamma * theta**2
    b = theta * (1 + gamma * theta)
    return 2 * level / (b + np.sqrt(b**2 + 4 * a * level))


def _round_to_total(values: np.ndarray, total: int) -> np.ndarray:
    """Floor, then give the missing units to the largest fractional parts."""
    scaled = values * (total / values.sum())
    counts = np.floor(scaled).astype(np.int64)
    missing = total - int(counts.sum())
    order = np.argsort(-(scaled - counts), kind="stable")
    counts[order[:missing]] += 1
    return counts


# ---------------------------------------------------------------------------- random draws
def normalised_speeds(raw: npt.ArrayLike, total: float) -> np.ndarray:
    """Scale raw speeds ``u_p > 0`` so that they sum to ``total``.

    Examples
    --------
    >>> normalised_speeds([1.0, 3.0], 2000.0).tolist()
    [500.0, 1500.0]
    """
    u = np.asarray(raw, dtype=np.float64).reshape(-1)
    if u.size == 0 or not np.all(np.isfinite(u)) or np.any(u <= 0):
        raise ValueError(f"raw speeds must be finite and > 0, got {u!r}")
    return u * (total / u.sum())


def poisson_arrivals(rng: np.random.Generator, jobs: int, rate: float) -> np.ndarray:
    """Arrival times of a Poisson process of ``rate`` (cumulative exponential gaps)."""
    return np.cumsum(rng.exponential(1.0 / rate, size=jobs))


@dataclass(frozen=True)
class StreamDraws:
    """Everything random about one stream, drawn once so runs can share it.

    Attributes
    ----------
    speeds : ndarray (P,)
        ``μ_p``, work units per slot.
    split : LoadSplit
    arrivals : ndarray (J,)
        Arrival times (slots).
    layered : ndarray (J, R, P)
        Time worker ``p`` spends on its round ``r`` of job ``j`` (slots).
    one_shot : ndarray (J, 1, P)
        The same without layering (one round of whole tasks).
    """

    speeds: np.ndarray
    split: LoadSplit
    arrivals: np.ndarray
    layered: np.ndarray
    one_shot: np.ndarray


def draw_stream(
    model: StreamModel,
    raw_speeds: npt.ArrayLike | None = None,
    fractions: Sequence[float] | None = None,
) -> StreamDraws:
    """Draw speeds, the load split, arrivals and every round time of a stream.

    Parameters
    ----------
    model : StreamModel
    raw_speeds : array_like, optional
        Relative worker speeds (e.g. ``1 / slowdown``); default ``U(0, 1)`` draws.
    fractions : sequence of float, optional
        Work share of each resolution; default ``model.fractions``.

    Notes
    -----
    Independent streams of ``SeedSequence(model.seed)`` feed the speeds, the arrivals,
    the layered rounds and the one-shot rounds, so changing one never changes the others.
    """
    seeds = np.random.SeedSequence(model.seed).spawn(4)
    rng_speed, rng_arrival, rng_layered, rng_one_shot = (np.random.default_rng(s) for s in seeds)
    if raw_speeds is None:
        # U(0, 1) on the open interval: a zero speed would be a worker that never finishes.
        raw_speeds = 1.0 - rng_speed.random(model.workers)
    speeds = normalised_speeds(raw_speeds, model.total_speed)
    if speeds.size != model.workers:
        raise ValueError(f"got {speeds.size} worker speeds for a model of {model.workers} workers")
    split = load_split(model.task_work / speeds, model.tasks, model.gamma)
    shares = np.asarray(model.fractions if fractions is None else fractions, dtype=np.float64)
    return StreamDraws(
        speeds=speeds,
        split=split,
        arrivals=poisson_arrivals(rng_arrival, model.jobs, model.rate),
        layered=_round_times(rng_layered, model.jobs, split, shares),
        one_shot=_round_times(rng_one_shot, model.jobs, split, np.ones(1)),
    )


def _round_times(
    rng: np.random.Generator, jobs: int, split: LoadSplit, fractions: np.ndarray
) -> np.ndarray:
    """``Gamma(κ_p, f_r θ_p)`` for every job, round and worker: shape (J, R, P)."""
    size = (jobs, fractions.size, split.tasks.size)
    scale = fractions[:, None] * split.task_times[None, :]
    shape = np.broadcast_to(split.tasks.astype(np.float64), size)
    return rng.gamma(shape, np.broadcast_to(scale, size))


def resolution_offsets(rounds: np.ndarray, pipelined: bool = False) -> np.ndarray:
    """Time from service start to the end of each resolution, (J, R).

    With a barrier after each resolution ``Σ_{q≤r} max_p rounds``; pipelined
    ``max_p Σ_{q≤r} rounds``.

    Parameters
    ----------
    rounds : ndarray (J, R, P)
        Time worker ``p`` spends on round ``r`` of job ``j``.
    pipelined : bool

    Examples
    --------
    >>> rounds = np.array([[[1.0, 2.0], [3.0, 1.0]]])
    >>> resolution_offsets(rounds).tolist(), resolution_offsets(rounds, pipelined=True).tolist()
    ([[2.0, 5.0]], [[2.0, 4.0]])
    """
    if pipelined:
        return np.max(np.cumsum(rounds, axis=1), axis=2)
    return np.cumsum(np.max(rounds, axis=2), axis=1)


# ---------------------------------------------------------------------------- deadlines
class DeadlineRule:
    """When a resolution fails, and when a failing job frees the cluster.

    One definition serves both the simulator (:meth:`decide`, every deadline of a
    success-rate curve at once, as vector lanes) and a real run's driver, which asks
    :meth:`fails` after each resolution and passes :meth:`task_deadline` into the work.
    Subclasses implement :meth:`fails` and :meth:`stop_time`; every argument may be an
    array (numpy broadcasting).
    """

    name = "rule"

    def fails(self, end: Times, start: Times, arrival: Times, next_arrival: Times,
              deadline: Times) -> np.ndarray:
        """Whether a resolution ending at ``end`` fails (the job then stops).

        Parameters
        ----------
        end : time the resolution ends
        start : the job's service start
        arrival, next_arrival : this job's arrival and the next one's (``inf`` if none)
        deadline : the deadline ``D`` (``inf``: none)
        """
        raise NotImplementedError

    def stop_time(self, end: Times, start: Times, arrival: Times, deadline: Times) -> np.ndarray:
        """When a job whose first failing resolution ends at ``end`` frees the cluster."""
        raise NotImplementedError

    def task_deadline(self, arrival: float, deadline: float) -> float:
        """The absolute time the work itself must stop at (``inf``: decided between
        resolutions only)."""
        return math.inf

    def decide(
        self,
        arrival: float,
        next_arrival: float,
        start: np.ndarray,
        offsets: np.ndarray,
        deadlines: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(success (D, R) bool, service end (D,))`` of one job under every deadline.

        Parameters
        ----------
        arrival, next_arrival : float
            This job's arrival and the next one's (``inf`` for the last job).
        start : ndarray (D,)
            Service start under each deadline.
        offsets : ndarray (R,)
            Time from service start to the end of each resolution.
        deadlines : ndarray (D,)
        """
        ends = start[:, None] + offsets[None, :]
        failed = self.fails(ends, start[:, None], arrival, next_arrival, deadlines[:, None])
        resolutions = offsets.size
        first = np.where(failed.any(axis=1), failed.argmax(axis=1), resolutions)
        success = np.arange(resolutions)[None, :] < first[:, None]
        first_end = ends[np.arange(ends.shape[0]), np.minimum(first, resolutions - 1)]
        stop = self.stop_time(first_end, start, arrival, deadlines)
        return success, np.where(first < resolutions, stop, ends[:, -1])


class PublishedDeadline(DeadlineRule):
    """Cut off after a resolution if the next job waits and the job has run longer than D.

    Notes
    -----
    Success under this rule is not monotone in ``D`` path by path: a shorter deadline
    cuts more jobs, which shortens the queue, so later jobs find nobody waiting more
    often. With the paper's parameters the curves dip by under one percentage point where
    ``D`` crosses a resolution's typical length. :class:`AbsoluteDeadline` is monotone.
    """

    name = "published"

    def fails(self, end: Times, start: Times, arrival: Times, next_arrival: Times,
              deadline: Times) -> np.ndarray:
        waiting = np.asarray(next_arrival) <= np.asarray(end)
        return waiting & (np.subtract(end, start) > np.asarray(deadline))

    def stop_time(self, end: Times, start: Times, arrival: Times, deadline: Times) -> np.ndarray:
        return np.asarray(end, dtype=np.float64)


class AbsoluteDeadline(DeadlineRule):
    """A resolution succeeds if it ends by arrival + D; the job is stopped at that time.

    A job that would start after its deadline is dropped (it frees the cluster at once).
    """

    name = "absolute"

    def fails(self, end: Times, start: Times, arrival: Times, next_arrival: Times,
              deadline: Times) -> np.ndarray:
        return np.asarray(end) > np.add(arrival, deadline)

    def stop_time(self, end: Times, start: Times, arrival: Times, deadline: Times) -> np.ndarray:
        return np.maximum(start, np.minimum(end, np.add(arrival, deadline)))

    def task_deadline(self, arrival: float, deadline: float) -> float:
        return arrival + deadline


def deadline_rule(rule: str | DeadlineRule) -> DeadlineRule:
    """The rule object for a name in :data:`DEADLINE_RULES` (objects pass through)."""
    if isinstance(rule, DeadlineRule):
        return rule
    rules: dict[str, type[DeadlineRule]] = {
        "published": PublishedDeadline,
        "absolute": AbsoluteDeadline,
    }
    if rule not in rules:
        raise ValueError(f"unknown deadline rule {rule!r}; use one of {DEADLINE_RULES}")
    return rules[rule]()


# ---------------------------------------------------------------------------- FIFO service
@dataclass(frozen=True)
class ServiceRecord:
    """FIFO service of a stream under every deadline of a vector.

    Attributes
    ----------
    deadlines : ndarray (D,)
    arrivals : ndarray (J,)
    start : ndarray (J, D)
        Service start of each job.
    completion : ndarray (J, R, D)
        When each resolution ended; NaN where it failed.
    success : ndarray (J, R, D) of bool
    """

    deadlines: np.ndarray
    arrivals: np.ndarray
    start: np.ndarray
    completion: np.ndarray
    success: np.ndarray

    @property
    def delays(self) -> np.ndarray:
        """Completion − arrival, (J, R, D); NaN where a resolution failed."""
        return self.completion - self.arrivals[:, None, None]


def serve_fifo(
    arrivals: npt.ArrayLike,
    offsets: npt.ArrayLike,
    deadlines: npt.ArrayLike,
    rule: str | DeadlineRule = "published",
) -> ServiceRecord:
    """Serve jobs first-in first-out, one at a time, under each deadline.

    Parameters
    ----------
    arrivals : array_like (J,)
        Non-decreasing arrival times.
    offsets : array_like (J, R)
        Time from a job's service start to the end of each resolution (non-decreasing).
    deadlines : array_like (D,)
        Deadlines ``D >= 0``; ``inf`` means no deadline.
    rule : str or DeadlineRule

    Examples
    --------
    Two jobs of one resolution lasting 5 slots, the second arriving at slot 1:

    >>> rec = serve_fifo([0.0, 1.0], [[5.0], [5.0]], [3.0, np.inf])
    >>> rec.success[:, 0].tolist()
    [[False, True], [True, True]]
    >>> rec.delays[:, 0, 1].tolist()
    [5.0, 9.0]
    """
    a = np.asarray(arrivals, dtype=np.float64).reshape(-1)
    off = np.asarray(offsets, dtype=np.float64)
    d = np.asarray(deadlines, dtype=np.float64).reshape(-1)
    _check_service_inputs(a, off, d)
    decide = deadline_rule(rule).decide
    jobs, resolutions = off.shape
    start = np.empty((jobs, d.size))
    completion = np.empty((jobs, resolutions, d.size))
    success = np.empty((jobs, resolutions, d.size), dtype=bool)
    following = np.append(a[1:], np.inf)
    end = np.full(d.size, -np.inf)
    # Each job's start depends on the previous job's end, so jobs are a loop; every
    # deadline is a vector lane of it.
    for j in range(jobs):
        s = np.maximum(a[j], end)
        ok, end = decide(a[j], following[j], s, off[j], d)
        start[j] = s
        success[j] = ok.T
        completion[j] = np.where(ok, s[:, None] + off[j][None, :], np.nan).T
    return ServiceRecord(d, a, start, completion, success)


def _check_service_inputs(a: np.ndarray, off: np.ndarray, d: np.ndarray) -> None:
    if off.ndim != 2 or off.shape[0] != a.size:
        raise ValueError(f"offsets must have shape ({a.size}, R), got {off.shape}")
    if a.size == 0 or off.shape[1] == 0:
        raise ValueError(f"need at least one job and one resolution, got offsets {off.shape}")
    if np.any(np.diff(a) < 0) or not np.all(np.isfinite(a)):
        raise ValueError("arrivals must be finite and non-decreasing")
    if np.any(np.diff(off, axis=1) < 0) or np.any(off < 0):
        raise ValueError("offsets must be >= 0 and non-decreasing in the resolution")
    if d.size == 0 or np.any(np.isnan(d)) or np.any(d < 0):
        raise ValueError(f"deadlines must be a non-empty list of values >= 0, got {d!r}")


# ---------------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class StreamOutcome:
    """What the experiment reports for one way of serving the stream.

    Attributes
    ----------
    deadlines : ndarray (D,)
    delays : ndarray (J, R)
        Per-resolution delays with no deadline.
    success : ndarray (R, D)
        Fraction of jobs whose resolution ``r`` succeeded under deadline ``d``.
    """

    deadlines: np.ndarray
    delays: np.ndarray
    success: np.ndarray

    @property
    def mean_delays(self) -> np.ndarray:
        """Mean delay of each resolution (no deadline), (R,)."""
        return np.mean(self.delays, axis=0)

    def scaled(self, factor: float) -> StreamOutcome:
        """The same outcome with times (delays and deadlines) multiplied by ``factor``."""
        return StreamOutcome(self.deadlines * factor, self.delays * factor, self.success)


def stream_outcome(
    arrivals: npt.ArrayLike,
    offsets: npt.ArrayLike,
    deadlines: npt.ArrayLike,
    rule: str | DeadlineRule = "published",
) -> StreamOutcome:
    """Delays without deadline and success rates under each deadline, in one FIFO pass."""
    d = np.asarray(deadlines, dtype=np.float64).reshape(-1)
    record = serve_fifo(arrivals, offsets, np.append(d, np.inf), rule)
    return StreamOutcome(
        deadlines=d,
        delays=record.delays[:, :, -1],
        success=record.success[:, :, :-1].mean(axis=0),
    )


@dataclass(frozen=True)
class StreamSimulation:
    """A simulated stream: the model, its draws, and layered and one-shot outcomes."""

    model: StreamModel
    rule: str
    draws: StreamDraws
    layered: StreamOutcome
    one_shot: StreamOutcome

    def summary(self) -> dict[str, Any]:
        """The fixed summary fields plus the model, speeds, split and lower bound."""
        out = stream_summary("simulate", self.layered, self.one_shot)
        out.update(
            rule=self.rule,
            model={k: getattr(self.model, k) for k in self.model.__dataclass_fields__},
            speeds=self.draws.speeds.tolist(),
            split=self.draws.split.tasks.tolist(),
            md1_bound=md1_bound(self.model).tolist(),
        )
        return out


def simulate_stream(
    model: StreamModel,
    deadlines: Iterable[float] = range(31),
    rule: str | DeadlineRule = "published",
    raw_speeds: npt.ArrayLike | None = None,
) -> StreamSimulation:
    """Simulate the stream with and without layering.

    Parameters
    ----------
    model : StreamModel
    deadlines : iterable of float
        Deadlines for the success-rate curves (default 0..30 slots).
    rule : {"published", "absolute"} or DeadlineRule
    raw_speeds : array_like, optional
        Relative worker speeds; default random ``U(0, 1)``.
    """
    rule_obj = deadline_rule(rule)
    d = np.asarray(list(deadlines), dtype=np.float64)
    draws = draw_stream(model, raw_speeds)
    layered, one_shot = (
        stream_outcome(draws.arrivals, resolution_offsets(rounds, model.pipelined), d, rule_obj)
        for rounds in (draws.layered, draws.one_shot)
    )
    return StreamSimulation(model, rule_obj.name, draws, layered, one_shot)


def stream_summary(mode: str, layered: StreamOutcome, one_shot: StreamOutcome) -> dict[str, Any]:
    """The summary's fixed fields: ``mode``, ``deadlines``, ``resolutions``, ``no_layering``.

    Examples
    --------
    >>> o = StreamOutcome(np.array([1.0]), np.array([[2.0]]), np.array([[0.5]]))
    >>> stream_summary("simulate", o, o)["resolutions"]
    [{'resolution': 1, 'mean_delay': 2.0, 'success': [0.5]}]
    """
    return {
        "mode": mode,
        "deadlines": [_json_number(x) for x in layered.deadlines],
        "resolutions": [
            {"resolution": r, "mean_delay": float(mean), "success": rates.tolist()}
            for r, (mean, rates) in enumerate(
                zip(layered.mean_delays, layered.success, strict=True), start=1
            )
        ],
        "no_layering": {
            "mean_delay": float(one_shot.mean_delays[-1]),
            "success": one_shot.success[-1].tolist(),
        },
    }


def _json_number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)
