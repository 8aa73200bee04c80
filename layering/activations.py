"""Activations for layered inference: piecewise-linear hidden units and output functions.

A hidden activation must be piecewise linear so that a layered upgrade can compute the
change of a unit's output exactly from its stored pre-activation ``z`` and the increment
``dz`` (METHOD §4): inside one linear piece the change is ``slope * dz``; across pieces it
is ``σ(z + dz) - σ(z)``, each side evaluated on its own piece. Every activation here is
continuous and non-decreasing, so ``[σ(lo), σ(hi)]`` encloses ``σ`` over ``[lo, hi]`` (what
the certified decision rule needs).

Examples
--------
>>> import numpy as np
>>> relu = resolve_activation("relu")
>>> float(relu.increment(np.array(-0.5), np.array(0.8)))  # z = -0.5 -> z' = 0.3
0.30000000000000004
>>> pl_sigmoid().value(np.array([-3.0, 0.0, 1.0, 3.0])).tolist()
[0.0, 0.5, 0.75, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "HIDDEN_ACTIVATIONS",
    "OUTPUT_FUNCTIONS",
    "PiecewiseLinear",
    "leaky_relu",
    "output_probabilities",
    "pl_sigmoid",
    "relu",
    "resolve_activation",
]

HIDDEN_ACTIVATIONS = ("relu", "leaky-relu", "pl-sigmoid")
OUTPUT_FUNCTIONS = ("sigmoid", "softmax")

DEFAULT_LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class PiecewiseLinear:
    """A continuous, non-decreasing piecewise-linear function of one variable.

    Piece ``k`` covers ``breaks[k-1] <= z < breaks[k]`` (piece 0 starts at -inf, the last
    piece ends at +inf) and there ``σ(z) = slopes[k] * z + intercepts[k]``.

    Parameters
    ----------
    name : str
        Name used in messages and reprs.
    breaks : tuple of float
        Strictly increasing break points.
    slopes, intercepts : tuple of float
        One per piece (``len(breaks) + 1``); slopes must be >= 0 and adjacent pieces must
        meet at their break point.

    Raises
    ------
    ValueError
        If the lengths disagree, the breaks do not increase, a slope is negative or the
        function jumps at a break.

    Examples
    --------
    >>> import numpy as np
    >>> clip01 = PiecewiseLinear("clip01", (0.0, 1.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    >>> clip01.value(np.array([-1.0, 0.25, 2.0])).tolist()
    [0.0, 0.25, 1.0]
    """

    name: str
    breaks: tuple[float, ...]
    slopes: tuple[float, ...]
    intercepts: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.breaks) + 1
        if len(self.slopes) != n or len(self.intercepts) != n:
            raise ValueError(
                f"activation {self.name!r}: {len(self.breaks)} break(s) need {n} slopes and"
                f" {n} intercepts, got {len(self.slopes)} and {len(self.intercepts)}"
            )
        if any(b1 >= b2 for b1, b2 in zip(self.breaks, self.breaks[1:], strict=False)):
            raise ValueError(f"activation {self.name!r}: breaks {self.breaks} must increase")
        if any(s < 0 for s in self.slopes):
            raise ValueError(
                f"activation {self.name!r}: slopes {self.slopes} must be >= 0 (monotone)"
            )
        for k, b in enumerate(self.breaks):
            left = self.slopes[k] * b + self.intercepts[k]
            right = self.slopes[k + 1] * b + self.intercepts[k + 1]
            if not np.isclose(left, right, rtol=0.0, atol=1e-12):
                raise ValueError(
                    f"activation {self.name!r} jumps at break {b}: {left} on the left,"
                    f" {right} on the right"
                )

    def piece(self, z: np.ndarray) -> np.ndarray:
        """Index of the linear piece each value of ``z`` falls in."""
        # A few comparisons beat a binary search: activations have one or two breaks.
        k = np.zeros(np.shape(z), dtype=np.intp)
        for b in self.breaks:
            k += z >= b
        return k

    def value(self, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``σ(z)``, elementwise (written to ``out`` if given, which is returned).

        A convex function (slopes never decrease, as ReLU and leaky ReLU) is the largest
        of its pieces and a concave one the smallest: a few whole-array operations instead
        of a gather by piece. Either way each value is its own piece's ``slope * z +
        intercept`` (pieces that meet at a break agree there up to rounding).

        Examples
        --------
        >>> import numpy as np
        >>> h = np.empty(2)
        >>> relu().value(np.array([-1.5, 2.0]), out=h) is h, h.tolist()
        (True, [0.0, 2.0])
        """
        z = np.asarray(z)
        if out is None:
            out = np.empty(np.shape(z), dtype=np.result_type(z, 1.0))
        if self._envelope is None:
            k = self.piece(z)
            np.multiply(np.take(self.slopes, k), z, out=out)
            return np.add(out, np.take(self.intercepts, k), out=out)
        pieces = [_affine(z, s, c) for s, c in zip(self.slopes, self.intercepts, strict=True)]
        if len(pieces) == 1:
            np.copyto(out, pieces[0])
            return out
        self._envelope(pieces[0], pieces[1], out=out)
        for piece in pieces[2:]:
            self._envelope(out, piece, out=out)
        return out

    @cached_property
    def _envelope(self) -> np.ufunc | None:
        """``np.maximum`` if σ is convex (the largest of its pieces), ``np.minimum`` if it
        is concave (the smallest), else None."""
        pairs = list(zip(self.slopes[:-1], self.slopes[1:], strict=True))
        if all(a <= b for a, b in pairs):
            return np.maximum
        if all(a >= b for a, b in pairs):
            return np.minimum
        return None

    def increment(self, z: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """``σ(z + dz) - σ(z)`` from the stored pre-activation ``z`` and its increment.

        Inside one piece this is ``slope * dz``; across pieces each side is evaluated on
        its own piece (for ReLU: the table of METHOD §4). The post-activation must not be
        used in place of ``z``: it loses which piece ``z`` was on.

        Examples
        --------
        >>> import numpy as np
        >>> z, dz = np.array([-1.0, -1.0, 2.0, 2.0]), np.array([0.5, 3.0, -5.0, 1.0])
        >>> relu().increment(z, dz).tolist()
        [0.0, 2.0, -2.0, 1.0]
        """
        z_new = z + dz
        k_old, k_new = self.piece(z), self.piece(z_new)
        change = np.asarray(np.take(self.slopes, k_old) * dz)
        across = k_old != k_new
        if across.any():
            change[across] = self.value(z_new[across]) - self.value(z[across])
        return change

    def interval(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Enclosure ``[σ(lo), σ(hi)]`` of ``σ`` over ``[lo, hi]`` (σ is non-decreasing)."""
        return self.value(lo), self.value(hi)


def _affine(z: np.ndarray, slope: float, intercept: float) -> np.ndarray | float:
    """``slope * z + intercept``, skipping the arithmetic that changes nothing."""
    if slope == 0.0:
        return intercept
    if slope == 1.0 and intercept == 0.0:
        return z
    return slope * z + intercept


def relu() -> PiecewiseLinear:
    """``max(z, 0)``."""
    return PiecewiseLinear("relu", (0.0,), (0.0, 1.0), (0.0, 0.0))


def leaky_relu(alpha: float = DEFAULT_LEAKY_SLOPE) -> PiecewiseLinear:
    """``z`` for ``z >= 0``, ``alpha * z`` below (``0 <= alpha <= 1``)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"leaky-relu slope alpha must be in [0, 1], got {alpha!r}")
    return PiecewiseLinear("leaky-relu", (0.0,), (float(alpha), 1.0), (0.0, 0.0))


def pl_sigmoid() -> PiecewiseLinear:
    """Piecewise-linear sigmoid ``clip(z / 4 + 1/2, 0, 1)``.

    The middle piece has the logistic sigmoid's slope at 0 (1/4) and its value there
    (1/2); it saturates at ``z = ±2``.
    """
    return PiecewiseLinear("pl-sigmoid", (-2.0, 2.0), (0.0, 0.25, 0.0), (0.0, 0.5, 1.0))


def resolve_activation(
    hidden: str | PiecewiseLinear, alpha: float | None = None
) -> PiecewiseLinear:
    """The hidden activation named by ``hidden`` (or ``hidden`` itself).

    Parameters
    ----------
    hidden : {"relu", "leaky-relu", "pl-sigmoid"} or PiecewiseLinear
    alpha : float, optional
        Negative-side slope of ``"leaky-relu"`` (default 0.01); only valid with it.

    Raises
    ------
    ValueError
        On an unknown name, or ``alpha`` given for another activation.
    """
    if isinstance(hidden, PiecewiseLinear):
        if alpha is not None:
            raise ValueError("alpha applies only to hidden='leaky-relu', not to an object")
        return hidden
    if hidden not in HIDDEN_ACTIVATIONS:
        raise ValueError(
            f"unknown hidden activation {hidden!r}; use one of {HIDDEN_ACTIVATIONS}"
            " or a PiecewiseLinear"
        )
    if alpha is not None and hidden != "leaky-relu":
        raise ValueError(f"alpha applies only to hidden='leaky-relu', not {hidden!r}")
    if hidden == "leaky-relu":
        return leaky_relu(DEFAULT_LEAKY_SLOPE if alpha is None else alpha)
    return relu() if hidden == "relu" else pl_sigmoid()


def output_probabilities(output: str, logits: np.ndarray) -> np.ndarray:
    """Apply the output function: logistic sigmoid elementwise, or softmax over the last axis.

    Examples
    --------
    >>> import numpy as np
    >>> output_probabilities("sigmoid", np.array([0.0])).tolist()
    [0.5]
    >>> output_probabilities("softmax", np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    if output == "sigmoid":
        # exp of a non-positive argument only: no overflow for large |z|.
        e = np.exp(-np.abs(logits))
        return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if output == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown output function {output!r}; use one of {OUTPUT_FUNCTIONS}")

