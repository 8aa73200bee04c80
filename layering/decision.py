"""Decision rules: which samples stop being refined after a resolution.

A rule is a small policy object. After every resolution, layered inference shows it a
:class:`DecisionContext` holding the samples still active, and the rule's :meth:`Rule.decide`
answers with a boolean mask of the samples to freeze; a frozen sample keeps the output of
that resolution. Rules compose: ``a | b`` (or ``AnyOf([a, b])``) freezes a sample when any
of them says so. A rule can also halt the whole batch (:meth:`Rule.halts`): the
:class:`Deadline` does, freezing every remaining sample with its current output.

Rules of METHOD §4 and §6:

- :class:`GrayZone` (sigmoid output): freeze once the output leaves ``[lo, hi]`` (paper:
  0.3, 0.6);
- :class:`Margin`: freeze once top-1 minus top-2 logit exceeds a threshold (paper: 0.05);
- :class:`Certified`: freeze only when interval bounds on the components not yet added
  prove that the full-resolution prediction cannot differ from the current one;
- :class:`Deadline`: a wall-clock limit for the whole batch.

Examples
--------
>>> import numpy as np
>>> ctx = DecisionContext(resolution=1, resolutions=4, output="sigmoid",
...                       outputs=np.array([0.1, 0.5, 0.9]), logits=np.array([-2.2, 0.0, 2.2]))
>>> GrayZone().decide(ctx).tolist()
[True, False, True]
>>> (GrayZone() | Margin(3.0)).decide(ctx).tolist()
[True, False, True]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np

__all__ = [
    "RULE_NAMES",
    "AnyOf",
    "Certified",
    "Deadline",
    "DecisionContext",
    "GrayZone",
    "LogitBounds",
    "Margin",
    "Rule",
    "freeze_mask",
    "predicted_class",
    "resolve_rule",
]

RULE_NAMES = ("gray-zone", "margin", "certified")


@dataclass(frozen=True)
class LogitBounds:
    """Guaranteed elementwise bounds on the full-resolution logits of the active samples.

    Attributes
    ----------
    lower, upper : ndarray
        Shaped like :attr:`DecisionContext.logits`.
    flops : int
        Floating-point operations spent computing them.
    """

    lower: np.ndarray
    upper: np.ndarray
    flops: int


class DecisionContext:
    """What a rule sees after a resolution: the samples that were refined in it.

    Parameters
    ----------
    resolution, resolutions : int
        The resolution just computed (1-based) and the total R.
    output : {"sigmoid", "softmax"}
        The network's output function.
    outputs : ndarray
        Probabilities of the active samples: shape ``(n,)`` (sigmoid) or ``(n, classes)``.
    logits : ndarray
        Their last-layer pre-activations, shaped like ``outputs``.
    samples : ndarray of int, optional
        Their indices in the batch (default ``arange(n)``).
    started : float, optional
        ``time.monotonic()`` when the inference started (default: now).
    bounds : callable, optional
        Computes :class:`LogitBounds` on demand (only rules that ask pay for it).
    """

    def __init__(
        self,
        *,
        resolution: int,
        resolutions: int,
        output: str,
        outputs: np.ndarray,
        logits: np.ndarray,
        samples: np.ndarray | None = None,
        started: float | None = None,
        bounds: Callable[[], LogitBounds] | None = None,
    ) -> None:
        self.resolution = resolution
        self.resolutions = resolutions
        self.output = output
        self.outputs = outputs
        self.logits = logits
        self.samples = np.arange(len(outputs)) if samples is None else samples
        self.started = time.monotonic() if started is None else started
        self._bounds = bounds

    @property
    def n_active(self) -> int:
        return len(self.outputs)

    @cached_property
    def logit_bounds(self) -> LogitBounds:
        """Bounds on the full-resolution logits (computed once, on first access)."""
        if self._bounds is None:
            raise ValueError("this decision context carries no logit bounds")
        return self._bounds()

    @property
    def bounds_flops(self) -> int:
        """Operations spent on :attr:`logit_bounds` (0 if no rule asked for them)."""
        return self.__dict__["logit_bounds"].flops if "logit_bounds" in self.__dict__ else 0


def predicted_class(output: str, logits: np.ndarray) -> np.ndarray:
    """The class a network predicts from its logits.

    Sigmoid: 1 when the logit is >= 0 (output >= 0.5), else 0. Softmax: the arg-max.
    """
    if output == "sigmoid":
        return (logits >= 0).astype(np.int64)
    return np.argmax(logits, axis=-1)


class Rule:
    """Base class of decision rules. Subclasses override :meth:`decide`.

    Examples
    --------
    >>> import numpy as np
    >>> class AfterTwo(Rule):
    ...     def decide(self, ctx):
    ...         return np.full(ctx.n_active, ctx.resolution >= 2)
    >>> ctx = DecisionContext(resolution=2, resolutions=4, output="sigmoid",
    ...                       outputs=np.array([0.5]), logits=np.array([0.0]))
    >>> AfterTwo().decide(ctx).tolist()
    [True]
    """

    def decide(self, ctx: DecisionContext) -> np.ndarray:
        """Boolean mask over the active samples of ``ctx``: True freezes the sample."""
        raise NotImplementedError(f"{type(self).__name__} must implement decide(ctx)")

    def halts(self, ctx: DecisionContext) -> str | None:
        """A reason to stop the whole batch now (every active sample freezes), or None."""
        return None

    def check(self, output: str, rounding: float | None) -> None:
        """Raise ``ValueError`` if the rule cannot apply to this network configuration."""

    def __or__(self, other: Rule) -> AnyOf:
        return AnyOf([self, other])


def freeze_mask(rule: Rule, ctx: DecisionContext) -> np.ndarray:
    """``rule.decide(ctx)``, checked to be a boolean mask over the active samples."""
    mask = np.asarray(rule.decide(ctx))
    if mask.shape != (ctx.n_active,) or mask.dtype != np.bool_:
        raise ValueError(
            f"{rule!r}.decide returned {mask.dtype} of shape {mask.shape}; expected a bool"
            f" mask of shape ({ctx.n_active},), one entry per active sample"
        )
    return mask


@dataclass(frozen=True)
class GrayZone(Rule):
    """Freeze a sample once its sigmoid output leaves ``[lo, hi]`` (METHOD §6).

    The paper's zone ``[0.3, 0.6]`` is asymmetric around the decision threshold 0.5.
    """

    lo: float = 0.3
    hi: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 <= self.lo <= self.hi <= 1.0:
            raise ValueError(f"gray zone needs 0 <= lo <= hi <= 1, got lo={self.lo}, hi={self.hi}")

    def check(self, output: str, rounding: float | None) -> None:
        if output != "sigmoid":
            raise ValueError(
                f"the gray-zone rule needs a sigmoid output, but the network's output is"
                f" {output!r}; use 'margin' or 'certified'"
            )

    def decide(self, ctx: DecisionContext) -> np.ndarray:
        return (ctx.outputs < self.lo) | (ctx.outputs > self.hi)


@dataclass(frozen=True)
class Margin(Rule):
    """Freeze a sample once its top-1 logit exceeds its top-2 logit by more than ``threshold``.

    A sigmoid output is the two-class softmax of logits ``(0, z)``, so its margin is ``|z|``.
    """

    threshold: float = 0.05

    def __post_init__(self) -> None:
        if not self.threshold >= 0.0:
            raise ValueError(f"margin threshold must be >= 0, got {self.threshold!r}")

    def decide(self, ctx: DecisionContext) -> np.ndarray:
        if ctx.output == "sigmoid":
            return np.abs(ctx.logits) > self.threshold
        top2 = np.partition(ctx.logits, -2, axis=-1)[:, -2:]
        return top2[:, 1] - top2[:, 0] > self.threshold


@dataclass(frozen=True)
class Certified(Rule):
    """Freeze a sample only when no completion of its bits can change its predicted class.

    Uses :attr:`DecisionContext.logit_bounds` (interval bounds on the full-resolution
    logits, from the input and weight components not yet added): a softmax sample freezes
    when the lower bound of one logit exceeds the upper bound of every other logit; a
    sigmoid sample when its logit interval lies strictly on one side of 0. Either way the
    current prediction must be that class, so the frozen answer equals the full-resolution
    answer. Needs exact upgrades (no rounding of increments).
    """

    def check(self, output: str, rounding: float | None) -> None:
        if rounding is not None:
            raise ValueError(
                "the certified rule needs exact upgrades, but rounding of increments is on"
                f" (rounding={rounding}); pass rounding=None"
            )

    def decide(self, ctx: DecisionContext) -> np.ndarray:
        bounds = ctx.logit_bounds
        current = predicted_class(ctx.output, ctx.logits)
        if ctx.output == "sigmoid":
            return ((bounds.lower > 0) & (current == 1)) | ((bounds.upper < 0) & (current == 0))
        rows = np.arange(ctx.n_active)
        best = np.argmax(bounds.lower, axis=1)
        others = bounds.upper.copy()
        others[rows, best] = -np.inf
        return (bounds.lower[rows, best] > others.max(axis=1)) & (current == best)


@dataclass(frozen=True)
class Deadline(Rule):
    """Stop the whole batch at a wall-clock deadline; every active sample keeps its output.

    Checked after each resolution (the first resolution always completes: before it
    there is no answer to keep).

    Parameters
    ----------
    seconds : float, optional
        Seconds after the inference started.
    at : float or datetime, optional
        An absolute time (``time.time()`` seconds, or a datetime). Give exactly one.
    """

    seconds: float | None = None
    at: float | None = None

    def __init__(self, seconds: float | None = None, *, at: float | datetime | None = None) -> None:
        if (seconds is None) == (at is None):
            raise ValueError(
                f"Deadline needs exactly one of seconds or at, got seconds={seconds!r}, at={at!r}"
            )
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"Deadline seconds must be >= 0, got {seconds!r}")
        object.__setattr__(self, "seconds", None if seconds is None else float(seconds))
        stamp = at.timestamp() if isinstance(at, datetime) else at
        object.__setattr__(self, "at", None if stamp is None else float(stamp))

    def expired(self, started: float) -> bool:
        """Has the deadline passed, for an inference started at ``started`` (monotonic)?"""
        if self.seconds is not None:
            return time.monotonic() - started >= self.seconds
        return time.time() >= float(self.at)  # type: ignore[arg-type]

    def decide(self, ctx: DecisionContext) -> np.ndarray:
        return np.zeros(ctx.n_active, dtype=bool)

    def halts(self, ctx: DecisionContext) -> str | None:
        return "deadline" if self.expired(ctx.started) else None


class AnyOf(Rule):
    """Freeze a sample when any of ``rules`` freezes it; halt when any halts.

    ``AnyOf([])`` never freezes anybody (every sample runs every resolution).
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        flat: list[Rule] = []
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"AnyOf takes Rule objects, got {rule!r}")
            flat.extend(rule.rules if isinstance(rule, AnyOf) else [rule])
        self.rules: tuple[Rule, ...] = tuple(flat)

    def __repr__(self) -> str:
        return f"AnyOf({list(self.rules)!r})"

    def check(self, output: str, rounding: float | None) -> None:
        for rule in self.rules:
            rule.check(output, rounding)

    def decide(self, ctx: DecisionContext) -> np.ndarray:
        mask = np.zeros(ctx.n_active, dtype=bool)
        for rule in self.rules:
            mask |= freeze_mask(rule, ctx)
        return mask

    def halts(self, ctx: DecisionContext) -> str | None:
        return next((r for r in (rule.halts(ctx) for rule in self.rules) if r), None)


def resolve_rule(rule: str | Rule | None) -> Rule:
    """The rule object for ``rule``: None (nobody freezes early), a name, or a Rule.

    Names take the paper's defaults: ``"gray-zone"`` is ``GrayZone(0.3, 0.6)``,
    ``"margin"`` is ``Margin(0.05)``, ``"certified"`` is ``Certified()``.

    Examples
    --------
    >>> resolve_rule("gray-zone")
    GrayZone(lo=0.3, hi=0.6)
    """
    if rule is None:
        return AnyOf([])
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        named: dict[str, Callable[[], Rule]] = {
            "gray-zone": GrayZone,
            "margin": Margin,
            "certified": Certified,
        }
        if rule not in named:
            raise ValueError(f"unknown decision rule {rule!r}; use one of {RULE_NAMES}")
        return named[rule]()
    raise TypeError(f"rule must be None, a name in {RULE_NAMES} or a Rule, got {rule!r}")
