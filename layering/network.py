"""Layered inference of a feed-forward network with piecewise-linear hidden units (METHOD §4).

Resolution ``r`` adds input component ``r`` and component ``r`` of every weight tensor
and bias (square shells), so after resolution ``r`` the outputs equal the one-shot
forward pass of the network whose inputs, weights and biases are truncated to their first
``r`` components. Every upgrade reuses the previous products::

    ΔZ_l = ΔH_{l-1} A_lᵀ + (H_{l-1} + ΔH_{l-1}) ΔA_lᵀ + Δb_l
    ΔH_l = σ(Z_l + ΔZ_l) - σ(Z_l)                  (from the stored pre-activation Z_l)

with ``A_l`` the weights accumulated so far. Only the samples a decision rule keeps
*active* are upgraded; their state is kept compacted, so frozen samples cost nothing.

Examples
--------
>>> import numpy as np
>>> from layered.layering import Partition
>>> net = Network([np.array([[0.5, -0.25]]), np.array([[1.5]])],
...               [np.array([0.125]), np.array([-0.5])], hidden="relu", output="sigmoid")
>>> X = np.array([[0.75, 0.5]])
>>> p = Partition((1, 0, -2, -4))
>>> results = list(layered_inference(net, X, p, [p, p]))
>>> [res.resolution for res in results], bool(np.allclose(results[-1].outputs, net.forward(X)))
([1, 2, 3], True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt

from .activations import (
    OUTPUT_FUNCTIONS,
    PiecewiseLinear,
    output_probabilities,
    resolve_activation,
)
from .decision import DecisionContext, LogitBounds, Rule, freeze_mask, resolve_rule
from .kernel import exact_dtype
from .partition import Components, Partition

__all__ = [
    "InferenceResult",
    "Network",
    "STOP_REASONS",
    "layered_inference",
    "one_shot_cost",
]

STOP_REASONS = ("completed", "decided", "deadline")

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Network:
    """A feed-forward network: ``Z_l = H_{l-1} W_lᵀ + b_l``, ``H_l = σ(Z_l)``.

    Parameters
    ----------
    weights : sequence of array_like
        ``W_l`` of shape ``(out_l, in_l)``; ``in_{l+1} == out_l``.
    biases : sequence of array_like
        ``b_l`` of shape ``(out_l,)``.
    hidden : {"relu", "leaky-relu", "pl-sigmoid"} or PiecewiseLinear
        Activation of every hidden layer.
    output : {"sigmoid", "softmax"}
        Output function applied to the last ``Z``: sigmoid needs one output unit,
        softmax at least two.
    alpha : float, optional
        Negative-side slope of ``"leaky-relu"`` (default 0.01).

    Raises
    ------
    ValueError
        On an empty network, non-2-D or non-finite weights, shapes that do not chain, a
        bias whose shape does not match its layer, or an unknown activation/output.

    Examples
    --------
    >>> import numpy as np
    >>> net = Network([np.eye(2), np.ones((1, 2))], [np.zeros(2), np.zeros(1)])
    >>> net.layer_sizes, net.forward(np.array([[1.0, -1.0]])).tolist()
    ((2, 2, 1), [0.7310585786300049])
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    hidden: PiecewiseLinear
    output: str

    def __init__(
        self,
        weights: Sequence[npt.ArrayLike],
        biases: Sequence[npt.ArrayLike],
        hidden: str | PiecewiseLinear = "relu",
        output: str = "sigmoid",
        *,
        alpha: float | None = None,
    ) -> None:
        ws = tuple(_frozen_float(w, f"weights[{i}]") for i, w in enumerate(weights))
        bs = tuple(_frozen_float(b, f"biases[{i}]") for i, b in enumerate(biases))
        _check_layers(ws, bs)
        if output not in OUTPUT_FUNCTIONS:
            raise ValueError(f"unknown output function {output!r}; use one of {OUTPUT_FUNCTIONS}")
        n_out = ws[-1].shape[0]
        if output == "sigmoid" and n_out != 1:
            raise ValueError(f"a sigmoid output needs 1 output unit, the last layer has {n_out}")
        if output == "softmax" and n_out < 2:
            raise ValueError(
                f"a softmax output needs >= 2 output units, the last layer has {n_out}"
            )
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "hidden", resolve_activation(hidden, alpha))
        object.__setattr__(self, "output", output)

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """``(in_1, out_1, out_2, ..., out_L)``."""
        return (self.weights[0].shape[1], *(w.shape[0] for w in self.weights))

    def logits(self, X: npt.ArrayLike) -> np.ndarray:
        """One-shot float64 pass: the last ``Z`` (shape ``(N,)`` for sigmoid, else ``(N, C)``)."""
        h = self._check_input(X)
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = h @ w.T + b
            h = self.hidden.value(z) if layer < self.n_layers - 1 else z
        return h[:, 0] if self.output == "sigmoid" else h

    def forward(self, X: npt.ArrayLike) -> np.ndarray:
        """One-shot float64 pass: output probabilities (``(N,)`` sigmoid, ``(N, C)`` softmax)."""
        return output_probabilities(self.output, self.logits(X))

    def _check_input(self, X: npt.ArrayLike) -> np.ndarray:
        x = np.asarray(X, dtype=np.float64)
        n_in = self.layer_sizes[0]
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(
                f"X must have shape (N, {n_in}) to match the first layer's weights"
                f" {self.weights[0].shape}, got {x.shape}"
            )
        if x.shape[0] == 0:
            raise ValueError("X is empty (no samples)")
        return x


def _frozen_float(a: npt.ArrayLike, name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    arr.flags.writeable = False
    return arr


def _check_layers(ws: tuple[np.ndarray, ...], bs: tuple[np.ndarray, ...]) -> None:
    if not ws:
        raise ValueError("a network needs at least one layer")
    if len(bs) != len(ws):
        raise ValueError(f"got {len(ws)} weight matrices but {len(bs)} biases")
    for layer, (w, b) in enumerate(zip(ws, bs, strict=True)):
        if w.ndim != 2 or w.size == 0:
            raise ValueError(
                f"weights[{layer}] must be a non-empty (out, in) matrix, got shape {w.shape}"
            )
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"biases[{layer}] has shape {b.shape} but weights[{layer}] {w.shape} has"
                f" {w.shape[0]} output rows: expected ({w.shape[0]},)"
            )
        if layer and w.shape[1] != ws[layer - 1].shape[0]:
            raise ValueError(
                f"weights[{layer}] {w.shape} takes {w.shape[1]} inputs but weights[{layer - 1}]"
                f" {ws[layer - 1].shape} gives {ws[layer - 1].shape[0]}"
            )


@dataclass(frozen=True)
class InferenceResult:
    """One resolution of layered inference.

    Attributes
    ----------
    resolution, resolutions : int
        This resolution r (1-based) and the total R.
    outputs : ndarray
        Probabilities of every sample, ``(N,)`` (sigmoid) or ``(N, C)`` (softmax); a
        frozen sample keeps the output of the resolution at which it froze.
    logits : ndarray
        The matching last-layer pre-activations.
    active : ndarray of bool
        ``(N,)``: samples still being refined after this resolution's decision.
    frozen_at : ndarray of int
        ``(N,)``: resolution at which each sample froze (0 while active).
    n_active : int
        Samples upgraded in this resolution (active during it).
    bit_ops : int
        Cost of the upgrade in the bit-operation model (see :func:`one_shot_cost`).
    flops : int
        Floating-point operations of the products executed (2 per multiply-add, plus
        the bias additions).
    decision_flops : int
        Operations the decision rule spent on logit bounds (certified rule).
    elapsed_s : float
        Wall-clock seconds of this resolution (upgrade and decision).
    stop_reason : str or None
        Set on the last result: ``"completed"`` (resolution R reached), ``"decided"``
        (every sample froze earlier) or ``"deadline"`` (a rule halted the batch).
    clipped : int
        Values clipped to a partition's range (0 unless ``clip=True``).
    """

    resolution: int
    resolutions: int
    outputs: np.ndarray
    logits: np.ndarray
    active: np.ndarray
    frozen_at: np.ndarray
    n_active: int
    bit_ops: int
    flops: int
    decision_flops: int
    elapsed_s: float
    stop_reason: str | None
    clipped: int

    @property
    def final(self) -> bool:
        """Is this the last result the inference yields?"""
        return self.stop_reason is not None


@dataclass(frozen=True)
class _Plan:
    """Validated operands: the input's and every layer's weight and bias components.

    The first layer's products (input components times weight components, both on
    power-of-two grids) run in ``first_dtype``: float32 when every partial sum stays
    below 2**24 grid units, so they are exact and twice as cheap as float64.
    """

    network: Network
    x: Components
    input_partition: Partition
    weight_partitions: tuple[Partition, ...]
    weight_parts: tuple[tuple[np.ndarray, ...], ...]
    bias_parts: tuple[tuple[np.ndarray, ...], ...]
    first_dtype: np.dtype
    input_negative: np.ndarray
    clipped: int

    @property
    def resolutions(self) -> int:
        return self.input_partition.m

    @property
    def n_samples(self) -> int:
        return self.x.digits[0].shape[0]

    def input_component(self, k: int, samples: np.ndarray | None) -> np.ndarray:
        """Component ``k`` of the inputs of ``samples`` (None: all), in ``first_dtype``."""
        digits = self.x.digits[k] if samples is None else self.x.digits[k][samples]
        return np.multiply(digits, math.ldexp(1.0, self.x.exponents[k]), dtype=self.first_dtype)


def _plan(
    network: Network,
    X: npt.ArrayLike,
    input_partition: Partition,
    weight_partitions: Sequence[Partition],
    clip: bool,
) -> _Plan:
    if not isinstance(network, Network):
        raise TypeError(f"model must be a Network, got {type(network).__name__}")
    pws = tuple(weight_partitions)
    _check_partitions(network, input_partition, pws)
    x_values = network._check_input(X)
    x = input_partition.components(x_values, clip=clip, name="input X")
    first_dtype = _first_layer_dtype(network, input_partition, pws[0])
    w_parts, b_parts = [], []
    clipped = _out_of_range(x_values, input_partition) if clip else 0
    for layer, (w, b, p) in enumerate(zip(network.weights, network.biases, pws, strict=True)):
        wc = p.components(w, clip=clip, name=f"layer {layer + 1} weights W{layer + 1}")
        bc = p.components(b, clip=clip, name=f"layer {layer + 1} bias b{layer + 1}")
        clipped += _out_of_range(w, p) + _out_of_range(b, p) if clip else 0
        dtype = first_dtype if layer == 0 else np.dtype(np.float64)
        w_parts.append(tuple(wc.value(i).astype(dtype) for i in range(p.m)))
        b_parts.append(tuple(bc.value(i) for i in range(p.m)))
    return _Plan(
        network,
        x,
        input_partition,
        pws,
        tuple(w_parts),
        tuple(b_parts),
        first_dtype,
        np.signbit(x_values),
        clipped,
    )


def _out_of_range(a: npt.ArrayLike, p: Partition) -> int:
    """Values outside ``|a| < 2**p_0``: the ones clipping changes beyond truncation.

    (``Components.clipped`` also counts in-range values above the largest truncated
    magnitude, which truncation maps to the same value anyway.)
    """
    return int(np.count_nonzero(np.abs(np.asarray(a, dtype=np.float64)) >= p.limit))


def _first_layer_dtype(network: Network, px: Partition, pw: Partition) -> np.dtype:
    """float32 if the first layer's products are exact in it, else float64."""
    span = (px.points[0] - px.points[-1]) + (pw.points[0] - pw.points[-1])
    dtype = exact_dtype(network.layer_sizes[0] * ((1 << span) - 1))
    return dtype if dtype == np.float32 else np.dtype(np.float64)


def _check_partitions(network: Network, px: Partition, pws: tuple[Partition, ...]) -> None:
    named = [("input_partition", px), *((f"weight_partitions[{i}]", p) for i, p in enumerate(pws))]
    for name, p in named:
        if not isinstance(p, Partition):
            raise TypeError(f"{name} must be a Partition, got {type(p).__name__}")
    if len(pws) != network.n_layers:
        raise ValueError(
            f"got {len(pws)} weight partitions for a network of {network.n_layers} layers;"
            " give one Partition per layer"
        )
    for i, p in enumerate(pws):
        if p.m != px.m:
            raise ValueError(
                f"weight_partitions[{i}] {p.points} has {p.m} components but input_partition"
                f" {px.points} has {px.m}; every partition needs the same number R"
            )


class _State:
    """Per-layer accumulated weights, and per active sample the stored H and Z.

    Arrays are replaced, never modified in place, so a decision context that captured
    them keeps a consistent snapshot.
    """

    def __init__(self, plan: _Plan) -> None:
        net = plan.network
        self.samples = np.arange(plan.n_samples)
        self.A = [np.zeros_like(parts[0]) for parts in plan.weight_parts]
        self.b = [np.zeros_like(b) for b in net.biases]
        n = len(self.samples)
        sizes = net.layer_sizes
        # Resolution 0 has Z = 0 everywhere, hence H_l = σ(0) in hidden layers (0.5 for
        # the piecewise-linear sigmoid); the input starts at 0.
        zero = np.zeros(1)
        self.H = [np.zeros((n, sizes[0]), dtype=plan.first_dtype)] + [
            np.full((n, s), float(net.hidden.value(zero)[0])) for s in sizes[1:-1]
        ]
        self.Z = [np.zeros((n, s)) for s in sizes[1:]]

    def snapshot(self) -> _State:
        """A copy that later upgrades leave alone (the arrays themselves are shared)."""
        copy = object.__new__(_State)
        copy.samples, copy.A, copy.b = self.samples, list(self.A), list(self.b)
        copy.H, copy.Z = list(self.H), list(self.Z)
        return copy

    def keep(self, mask: np.ndarray) -> None:
        """Drop the samples not in ``mask`` (a bool mask over the active samples)."""
        if mask.all():
            return
        self.samples = self.samples[mask]
        self.H = [h[mask] for h in self.H]
        self.Z = [z[mask] for z in self.Z]


def _upgrade(plan: _Plan, state: _State, k: int, rounding: float | None) -> tuple[int, int]:
    """Add component ``k`` (0-based) of the input and of every layer; return (bit_ops, flops)."""
    net = plan.network
    n = len(state.samples)
    dh = plan.input_component(k, None if n == plan.n_samples else state.samples)
    bit_ops = flops = 0
    for layer in range(net.n_layers):
        dA, db = plan.weight_parts[layer][k], plan.bias_parts[layer][k]
        h_new = state.H[layer] + dh
        dz = h_new @ dA.T + db
        out, inp = dA.shape
        flops += 2 * n * inp * out + n * out
        if k:  # A is still zero at the first resolution: nothing to reuse yet.
            dz += dh @ state.A[layer].T
            flops += 2 * n * inp * out
        if rounding is not None:
            dz = np.round(dz / rounding) * rounding
        bit_ops += _upgrade_bit_ops(plan, layer, k, n)
        if layer < net.n_layers - 1:
            dh = net.hidden.increment(state.Z[layer], dz)
        state.H[layer] = h_new
        state.Z[layer] = state.Z[layer] + dz
        state.A[layer] = state.A[layer] + dA
        state.b[layer] = state.b[layer] + db
    return bit_ops, flops


def _upgrade_bit_ops(plan: _Plan, layer: int, k: int, n: int) -> int:
    """Bit operations of one layer's upgrade at component ``k`` for ``n`` samples.

    A b1-bit by b2-bit multiply costs b1*b2. Activations of every layer are counted with
    the input's bit widths (the input partition at the same resolution); the bias is a
    product with the constant 1 (one bit).
    """
    bx = plan.input_partition.widths
    bw = plan.weight_partitions[layer].widths
    out, inp = plan.network.weights[layer].shape
    per_pair = bx[k] * sum(bw[:k]) + sum(bx[: k + 1]) * bw[k]
    return n * out * (inp * per_pair + bw[k])


def one_shot_cost(
    network: Network,
    input_partition: Partition,
    weight_partitions: Sequence[Partition],
    n_samples: int,
) -> tuple[int, int]:
    """(bit operations, flops) of a one-shot pass on the truncated operands.

    Bit operations use the same model as :attr:`InferenceResult.bit_ops`: every product
    costs (activation bits) x (weight bits) with all R components, so without early stops
    the resolutions of a layered inference add up to exactly this. Flops count one GEMM
    per layer (2 per multiply-add) plus the bias additions.

    Examples
    --------
    >>> import numpy as np
    >>> net = Network([np.zeros((3, 4))], [np.zeros(3)], output="softmax")
    >>> one_shot_cost(net, Partition((0, -1, -2)), [Partition((0, -2, -4))], 10)
    (1080, 270)
    """
    bits_x = sum(input_partition.widths)
    bit_ops = flops = 0
    for w, p in zip(network.weights, weight_partitions, strict=True):
        out, inp = w.shape
        bits_w = sum(p.widths)
        bit_ops += n_samples * out * (inp * bits_x * bits_w + bits_w)
        flops += 2 * n_samples * out * inp + n_samples * out
    return bit_ops, flops


def _logit_bounds(plan: _Plan, state: _State, r: int) -> LogitBounds:
    """Bounds on the full-resolution logits of the active samples after ``r`` resolutions.

    What the components not yet added can still contribute is an interval per entry
    (:func:`_remainder`); it is propagated through every layer in midpoint-radius
    arithmetic around the stored state, and through the monotone activations by their
    end points. The deviation of layer l's pre-activation, with dH the deviation of its
    input and e_W of its weights (W_full = A + e_W)::

        Z_full - Z = dH Aᵀ + (H + dH) e_Wᵀ + e_b
    """
    net = plan.network
    negative = plan.input_negative[state.samples]
    c_h, rad_h = _remainder(negative, plan.input_partition.tail_bound(r))
    flops = 0
    for layer in range(net.n_layers):
        tail = plan.weight_partitions[layer].tail_bound(r)
        A = state.A[layer]
        c_w, rad_w = _remainder(np.signbit(net.weights[layer]), tail)
        c_b, rad_b = _remainder(np.signbit(net.biases[layer]), tail)
        c_H = state.H[layer] + c_h
        w_mag = np.abs(A) + np.abs(c_w) + rad_w  # bounds |W_full|
        b_mag = np.abs(state.b[layer]) + np.abs(c_b) + rad_b
        center = c_h @ A.T + c_H @ c_w.T + c_b
        radius = rad_h @ w_mag.T + np.abs(c_H) @ rad_w.T + rad_b
        radius += _rounding_margin(plan, np.abs(c_H) + rad_h, w_mag, b_mag)
        flops += 8 * c_h.shape[0] * A.size  # four products
        lo = state.Z[layer] + center - radius
        hi = state.Z[layer] + center + radius
        if layer == net.n_layers - 1:
            break
        s_lo, s_hi = net.hidden.interval(lo, hi)
        c_h = 0.5 * (s_lo + s_hi) - state.H[layer + 1]
        rad_h = 0.5 * (s_hi - s_lo) + _EPS * (np.abs(s_lo) + np.abs(s_hi))
    if net.output == "sigmoid":
        lo, hi = lo[:, 0], hi[:, 0]
    return LogitBounds(lower=lo, upper=hi, flops=flops)


def _remainder(negative: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Center and radius of what the components not yet added can add to each entry.

    Components are sign-magnitude: they all carry the value's sign, which is known from
    the first resolution on (the sign bit travels with the first component). So the
    remainder lies in ``[0, tail]`` for a non-negative value and ``[-tail, 0]`` for a
    negative one.
    """
    return np.where(negative, -0.5 * tail, 0.5 * tail), np.full(negative.shape, 0.5 * tail)


def _rounding_margin(
    plan: _Plan, h_mag: np.ndarray, w_mag: np.ndarray, b_mag: np.ndarray
) -> np.ndarray:
    """A floating-point safety margin per sample for one layer's bounds.

    Covers the rounding of the stored state (R increments), of the bound arithmetic and
    of a float64 reference pass: each is at most ``(inner + 2) ε Σ|h||w|`` per product,
    and ``Σ_j |h_j||w_j| <= Σ_j |h_j| max|w|``.
    """
    inner = h_mag.shape[1] + 1
    scale = 4 * (plan.resolutions + 2) * (inner + 2) * _EPS
    mag = h_mag.sum(axis=1) * float(w_mag.max()) + float(b_mag.max())
    return (scale * mag)[:, None]


def layered_inference(
    model: Network,
    X: npt.ArrayLike,
    input_partition: Partition,
    weight_partitions: Sequence[Partition],
    rule: str | Rule | None = None,
    *,
    rounding: float | None = None,
    clip: bool = False,
) -> Iterator[InferenceResult]:
    """Run a network on ``X`` in successive resolutions, freezing samples by a rule.

    Parameters
    ----------
    model : Network
    X : array_like, shape (N, in_1)
        Inputs, inside ``input_partition``'s range.
    input_partition : Partition
        Splits the inputs into R components.
    weight_partitions : sequence of Partition
        One per layer, applied to that layer's weights and bias; each with R components.
    rule : None, {"gray-zone", "margin", "certified"} or Rule
        Which samples stop being refined after each resolution. None: every sample runs
        every resolution. Names use the paper's thresholds.
    rounding : float, optional
        Round every increment ΔZ to this grid (nearest, ties to even), as the source's
        fixed-point activations do (e.g. ``2**-4``). Off by default: the upgrades are
        then exact.
    clip : bool
        Clip values outside a partition's range (counted in ``clipped``) instead of raising.

    Yields
    ------
    InferenceResult
        One per resolution until every sample is frozen; the last one has ``stop_reason``.

    Raises
    ------
    ValueError
        On a shape mismatch, NaN/inf, partitions with different component counts or
        the wrong number of them, an unknown rule, a rule that does not fit the output
        (gray zone with softmax) or the rounding (certified), or a bad ``rounding``.
    PartitionRangeError
        On an input, weight or bias outside its partition's range (unless ``clip``).

    Notes
    -----
    METHOD §4 (Esfahanizadeh, Cohen, Shamai, Médard, "Successive Refinement in
    Large-Scale Computation"). Without rounding, the outputs at resolution r equal the
    one-shot pass of the network truncated to r components (up to float64 rounding).
    """
    if rounding is not None and not (math.isfinite(rounding) and rounding > 0):
        raise ValueError(f"rounding must be a positive grid step or None, got {rounding!r}")
    plan = _plan(model, X, input_partition, weight_partitions, clip)
    policy = resolve_rule(rule)
    policy.check(model.output, rounding)
    return _resolutions(plan, policy, rounding)


def _resolutions(plan: _Plan, policy: Rule, rounding: float | None) -> Iterator[InferenceResult]:
    net, R = plan.network, plan.resolutions
    n = plan.n_samples
    shape = (n,) if net.output == "sigmoid" else (n, net.weights[-1].shape[0])
    logits, outputs = np.zeros(shape), np.zeros(shape)
    frozen_at = np.zeros(n, dtype=np.int64)
    state = _State(plan)
    started = time.monotonic()
    for r in range(1, R + 1):
        t0 = time.monotonic()
        n_active = len(state.samples)
        bit_ops, flops = _upgrade(plan, state, r - 1, rounding)
        z_last = state.Z[-1][:, 0] if net.output == "sigmoid" else state.Z[-1]
        logits[state.samples] = z_last
        outputs[state.samples] = output_probabilities(net.output, z_last)
        ctx = DecisionContext(
            resolution=r,
            resolutions=R,
            output=net.output,
            outputs=outputs[state.samples],
            logits=z_last,
            samples=state.samples,
            started=started,
            bounds=partial(_logit_bounds, plan, state.snapshot(), r),
        )
        stop = "completed" if r == R else policy.halts(ctx)
        freeze = np.ones(n_active, dtype=bool) if stop else freeze_mask(policy, ctx)
        if stop is None and freeze.all():
            stop = "decided"
        frozen_at[state.samples[freeze]] = r
        state.keep(~freeze)
        active = np.zeros(n, dtype=bool)
        active[state.samples] = True
        yield InferenceResult(
            resolution=r,
            resolutions=R,
            outputs=outputs.copy(),
            logits=logits.copy(),
            active=active,
            frozen_at=frozen_at.copy(),
            n_active=n_active,
            bit_ops=bit_ops,
            flops=flops,
            decision_flops=ctx.bounds_flops,
            elapsed_s=time.monotonic() - t0,
            stop_reason=stop,
            clipped=plan.clipped,
        )
        if stop:
            return

