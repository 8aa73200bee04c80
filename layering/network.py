"""Layered inference of a feed-forward network with piecewise-linear hidden units (METHOD §4).

Resolution ``r`` adds input component ``r`` and component ``r`` of every weight tensor
and bias (square shells), so after resolution ``r`` the outputs equal the one-shot
forward pass of the network whose inputs, weights and biases are truncated to their first
``r`` components. Every upgrade reuses the previous products::

    ΔZ_l = ΔH_{l-1} A_lᵀ + (H_{l-1} + ΔH_{l-1}) ΔA_lᵀ + Δb_l
    ΔH_l = σ(Z_l + ΔZ_l) - σ(Z_l)                  (from the stored pre-activation Z_l)

with ``A_l`` the weights accumulated so far. Only the samples a decision rule keeps
*active* are upgraded; their state is kept compacted, so frozen samples cost nothing.

:func:`layered_inference` runs every resolution in one go. The same steps are public, for
callers that run one resolution at a time on part of a batch and keep the state in
between (a pipeline task per resolution over chunks of samples): an
:class:`InferencePlan` (validated operands, see :func:`plan_inference`) starts an
:class:`InferenceState`, :meth:`InferencePlan.advance` adds one resolution to its active
samples, :meth:`InferencePlan.decide` freezes samples by a rule, and
:meth:`InferenceState.to_arrays` / :meth:`InferencePlan.restore` carry a state through
files. :func:`layered_inference` is these steps in a loop, so both give identical results.

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

import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
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
    "InferencePlan",
    "InferenceResult",
    "InferenceState",
    "Network",
    "ResolutionDecision",
    "ResolutionUpgrade",
    "STOP_REASONS",
    "layered_inference",
    "one_shot_cost",
    "plan_inference",
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


@dataclass(frozen=True, eq=False)
class InferenceState:
    """A batch of samples after some resolutions: every answer so far, and the active layers.

    Made by :meth:`InferencePlan.start`, :meth:`InferencePlan.advance` and
    :meth:`InferencePlan.decide`; its arrays are never modified in place (every step makes
    new ones), so a state can be kept, persisted or compared while later steps run.

    Attributes
    ----------
    resolution : int
        Resolutions added so far (0 before the first).
    samples : ndarray of int
        Indices of the active samples in the batch, increasing.
    H : tuple of ndarray
        ``H_0 ... H_{L-1}``, the input of each layer, one row per active sample.
    Z : tuple of ndarray
        ``Z_1 ... Z_L``, the pre-activation of each layer, one row per active sample.
    logits, outputs : ndarray
        Last-layer pre-activations and output probabilities of every sample (``(N,)``
        sigmoid, ``(N, C)`` softmax); a frozen sample keeps those of the resolution at
        which it froze.
    frozen_at : ndarray of int
        ``(N,)``: resolution at which each sample froze (0 while active).
    """

    resolution: int
    samples: np.ndarray
    H: tuple[np.ndarray, ...]
    Z: tuple[np.ndarray, ...]
    logits: np.ndarray
    outputs: np.ndarray
    frozen_at: np.ndarray

    @property
    def active(self) -> np.ndarray:
        """``(N,)`` bool: the samples still being refined."""
        mask = np.zeros(len(self.frozen_at), dtype=bool)
        mask[self.samples] = True
        return mask

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as named arrays (for ``np.savez``), restored by :meth:`InferencePlan.restore`.

        ``H_0`` is left out: it is the inputs truncated to ``resolution`` components, which
        the plan rebuilds (it is the largest array and holds nothing new).
        """
        arrays = {
            "resolution": np.array(self.resolution),
            "samples": self.samples,
            "logits": self.logits,
            "outputs": self.outputs,
            "frozen_at": self.frozen_at,
        }
        arrays.update({f"H{layer}": h for layer, h in enumerate(self.H) if layer})
        arrays.update({f"Z{layer}": z for layer, z in enumerate(self.Z, start=1)})
        return arrays

    def _keep(self, keep: np.ndarray, frozen_at: np.ndarray) -> InferenceState:
        """This state with only the active samples in ``keep`` (a mask over them) left active."""
        if keep.all():
            return dataclasses.replace(self, frozen_at=frozen_at)
        return dataclasses.replace(
            self,
            samples=self.samples[keep],
            H=tuple(h[keep] for h in self.H),
            Z=tuple(z[keep] for z in self.Z),
            frozen_at=frozen_at,
        )


@dataclass(frozen=True)
class ResolutionUpgrade:
    """What :meth:`InferencePlan.advance` returns.

    Attributes
    ----------
    state : InferenceState
        After the upgrade, before any decision (the same samples active).
    n_active : int
        Samples upgraded.
    bit_ops, flops : int
        Cost of the upgrade (see :class:`InferenceResult`).
    """

    state: InferenceState
    n_active: int
    bit_ops: int
    flops: int


@dataclass(frozen=True)
class ResolutionDecision:
    """What :meth:`InferencePlan.decide` returns.

    Attributes
    ----------
    state : InferenceState
        The frozen samples dropped from the active ones (their answers kept).
    stop : str or None
        ``"completed"`` at the last resolution, ``"decided"`` when no sample is left
        active, a rule's halting reason (``"deadline"``), else None.
    decision_flops : int
        Operations the rule spent on logit bounds (certified rule).
    """

    state: InferenceState
    stop: str | None
    decision_flops: int


@dataclass(frozen=True, eq=False)
class InferencePlan:
    """Validated operands of a layered inference, and its steps.

    Holds the input's and every layer's weight and bias components, and the weights and
    biases accumulated after each resolution (shared by every sample). Build it with
    :func:`plan_inference`; :meth:`start`, :meth:`advance` and :meth:`decide` then run the
    inference one resolution at a time, and :meth:`restore` takes up a state saved with
    :meth:`InferenceState.to_arrays`. A batch split into chunks, each with its own plan,
    gives per sample exactly what one plan over the whole batch gives.

    The first layer's products (input components times weight components, both on
    power-of-two grids) run in ``first_dtype``: float32 when every partial sum stays
    below 2**24 grid units, so they are exact and twice as cheap as float64.

    Examples
    --------
    >>> import numpy as np
    >>> from layered.layering import Partition
    >>> net = Network([np.array([[1.5, -1.0]])], [np.array([0.25])], output="sigmoid")
    >>> p = Partition((1, 0, -2))
    >>> plan = plan_inference(net, np.array([[1.75, 0.5], [0.25, 0.25]]), p, [p])
    >>> state = plan.start()
    >>> for _ in range(plan.resolutions):
    ...     state = plan.decide(plan.advance(state).state, "margin").state
    ...     print(state.resolution, state.logits.tolist(), state.frozen_at.tolist())
    1 [1.0, 0.0] [1, 0]
    2 [1.0, 0.375] [1, 2]
    """

    network: Network
    x: Components
    input_partition: Partition
    weight_partitions: tuple[Partition, ...]
    weight_parts: tuple[tuple[np.ndarray, ...], ...]
    bias_parts: tuple[tuple[np.ndarray, ...], ...]
    weights_after: tuple[tuple[np.ndarray, ...], ...]
    biases_after: tuple[tuple[np.ndarray, ...], ...]
    first_dtype: np.dtype
    input_negative: np.ndarray
    clipped: int

    @property
    def resolutions(self) -> int:
        return self.input_partition.m

    @property
    def n_samples(self) -> int:
        return self.x.digits[0].shape[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the batch's outputs: ``(N,)`` (sigmoid) or ``(N, C)`` (softmax)."""
        net = self.network
        return (self.n_samples,) if net.output == "sigmoid" else (
            self.n_samples, net.weights[-1].shape[0])

    def input_component(self, k: int, samples: np.ndarray | None) -> np.ndarray:
        """Component ``k`` of the inputs of ``samples`` (None: all), in ``first_dtype``."""
        digits = self.x.digits[k] if samples is None else self.x.digits[k][samples]
        return np.multiply(digits, math.ldexp(1.0, self.x.exponents[k]), dtype=self.first_dtype)

    def input_prefix(self, k: int, samples: np.ndarray) -> np.ndarray:
        """The inputs of ``samples`` cut to ``k`` components, summed as the upgrades add them."""
        h = np.zeros((len(samples), self.network.layer_sizes[0]), dtype=self.first_dtype)
        for j in range(k):
            h = h + self.input_component(j, samples)
        return h

    def start(self) -> InferenceState:
        """The batch before the first resolution: every sample active, every Z = 0."""
        net, n = self.network, self.n_samples
        sizes = net.layer_sizes
        # Resolution 0 has Z = 0 everywhere, hence H_l = σ(0) in hidden layers (0.5 for
        # the piecewise-linear sigmoid); the input starts at 0.
        rest = float(net.hidden.value(np.zeros(1))[0])
        H = (np.zeros((n, sizes[0]), dtype=self.first_dtype),
             *(np.full((n, s), rest) for s in sizes[1:-1]))
        Z = tuple(np.zeros((n, s)) for s in sizes[1:])
        zeros = np.zeros(self.output_shape)
        return InferenceState(0, np.arange(n), H, Z, zeros, zeros.copy(),
                              np.zeros(n, dtype=np.int64))

    def advance(self, state: InferenceState, rounding: float | None = None) -> ResolutionUpgrade:
        """Add the next resolution's components to the active samples of ``state``.

        Parameters
        ----------
        state : InferenceState
            A state of this plan (its batch, its samples).
        rounding : float, optional
            Round every increment ΔZ to this grid (see :func:`layered_inference`).

        Raises
        ------
        ValueError
            If ``state`` already holds every resolution.
        """
        k = state.resolution
        if k >= self.resolutions:
            raise ValueError(
                f"the state already holds all {self.resolutions} resolutions; nothing to add"
            )
        H, Z = list(state.H), list(state.Z)
        bit_ops, flops = _upgrade(self, H, Z, state.samples, k, rounding)
        z_last = _last_logits(self.network, Z[-1])
        logits, outputs = state.logits.copy(), state.outputs.copy()
        logits[state.samples] = z_last
        outputs[state.samples] = output_probabilities(self.network.output, z_last)
        upgraded = InferenceState(k + 1, state.samples, tuple(H), tuple(Z), logits, outputs,
                                  state.frozen_at)
        return ResolutionUpgrade(upgraded, len(state.samples), bit_ops, flops)

    def decide(
        self, state: InferenceState, rule: str | Rule | None = None, *,
        started: float | None = None,
    ) -> ResolutionDecision:
        """Freeze the active samples of ``state`` that ``rule`` stops (all of them at the end).

        Parameters
        ----------
        state : InferenceState
            Right after :meth:`advance`.
        rule : None, name or Rule
            As in :func:`layered_inference`.
        started : float, optional
            ``time.monotonic()`` when the inference started (for a :class:`Deadline`).
        """
        r, net = state.resolution, self.network
        if r < 1:
            raise ValueError("decide needs a state with at least one resolution (advance first)")
        policy = resolve_rule(rule)
        policy.check(net.output, None)
        z_last = _last_logits(net, state.Z[-1])
        ctx = DecisionContext(
            resolution=r,
            resolutions=self.resolutions,
            output=net.output,
            outputs=state.outputs[state.samples],
            logits=z_last,
            samples=state.samples,
            started=started,
            bounds=partial(_logit_bounds, self, state),
        )
        stop = "completed" if r == self.resolutions else policy.halts(ctx)
        freeze = np.ones(len(state.samples), dtype=bool) if stop else freeze_mask(policy, ctx)
        if stop is None and freeze.all():
            stop = "decided"
        frozen_at = state.frozen_at.copy()
        frozen_at[state.samples[freeze]] = r
        return ResolutionDecision(state._keep(~freeze, frozen_at), stop, ctx.bounds_flops)

    def restore(self, arrays: Mapping[str, np.ndarray]) -> InferenceState:
        """The state saved by :meth:`InferenceState.to_arrays` for this plan's batch.

        Raises
        ------
        ValueError
            If an array is missing or its shape does not fit this plan (the message names it).
        """
        r = int(_saved(arrays, "resolution", ()))
        if not 0 <= r <= self.resolutions:
            raise ValueError(f"saved state has resolution {r}, outside 0..{self.resolutions}")
        n, sizes = self.n_samples, self.network.layer_sizes
        samples = np.asarray(_saved(arrays, "samples", (None,)), dtype=np.int64)
        if samples.size and (samples.min() < 0 or samples.max() >= n):
            raise ValueError(f"saved state has active samples outside 0..{n - 1}")
        k = len(samples)
        hidden = range(1, len(sizes) - 1)
        H = (self.input_prefix(r, samples),
             *(_saved(arrays, f"H{layer}", (k, sizes[layer])) for layer in hidden))
        Z = tuple(_saved(arrays, f"Z{layer}", (k, sizes[layer])) for layer in range(1, len(sizes)))
        return InferenceState(
            r, samples, H, Z,
            _saved(arrays, "logits", self.output_shape),
            _saved(arrays, "outputs", self.output_shape),
            np.asarray(_saved(arrays, "frozen_at", (n,)), dtype=np.int64),
        )


def _saved(
    arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int | None, ...]
) -> np.ndarray:
    """Array ``name`` of a saved state, checked to have ``shape`` (None: any length)."""
    if name not in arrays:
        raise ValueError(f"saved state has no array {name!r} (has {sorted(arrays)})")
    a = np.asarray(arrays[name])
    if a.ndim != len(shape) or any(
        s is not None and s != t for s, t in zip(shape, a.shape, strict=True)
    ):
        raise ValueError(f"saved state array {name!r} has shape {a.shape}, expected {shape}")
    return a


def _last_logits(network: Network, z_last: np.ndarray) -> np.ndarray:
    return z_last[:, 0] if network.output == "sigmoid" else z_last


def plan_inference(
    network: Network,
    X: npt.ArrayLike,
    input_partition: Partition,
    weight_partitions: Sequence[Partition],
    *,
    clip: bool = False,
) -> InferencePlan:
    """Validate and split the operands of a layered inference of ``network`` on ``X``.

    Parameters and errors as in :func:`layered_inference` (which calls this first).

    Examples
    --------
    >>> import numpy as np
    >>> from layered.layering import Partition
    >>> net = Network([np.ones((1, 3))], [np.zeros(1)])
    >>> p = Partition((1, 0, -1))
    >>> plan = plan_inference(net, np.full((5, 3), 0.5), p, [p])
    >>> plan.resolutions, plan.n_samples, plan.output_shape
    (2, 5, (5,))
    """
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
    return InferencePlan(
        network,
        x,
        input_partition,
        pws,
        tuple(w_parts),
        tuple(b_parts),
        _accumulated(w_parts),
        _accumulated(b_parts),
        first_dtype,
        np.signbit(x_values),
        clipped,
    )


def _accumulated(parts: Sequence[tuple[np.ndarray, ...]]) -> tuple[tuple[np.ndarray, ...], ...]:
    """``[k][layer]``: each layer's components 0..k-1 summed in order (k = 0..R)."""
    totals = [np.zeros_like(layer_parts[0]) for layer_parts in parts]
    after = [tuple(totals)]
    for k in range(len(parts[0])):
        totals = [total + layer_parts[k] for total, layer_parts in zip(totals, parts, strict=True)]
        after.append(tuple(totals))
    return tuple(after)

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
        if p.scaled:
            raise ValueError(f"{name} must be one global partition (axis=None), got {p!r}")
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


def _upgrade(
    plan: InferencePlan, H: list[np.ndarray], Z: list[np.ndarray], samples: np.ndarray, k: int,
    rounding: float | None,
) -> tuple[int, int]:
    """Add component ``k`` (0-based) of the input and of every layer to the active samples'
    ``H`` and ``Z`` (lists, whose arrays are replaced); return (bit_ops, flops)."""
    net = plan.network
    n = len(samples)
    dh = plan.input_component(k, None if n == plan.n_samples else samples)
    bit_ops = flops = 0
    for layer in range(net.n_layers):
        dA, db = plan.weight_parts[layer][k], plan.bias_parts[layer][k]
        h_new = H[layer] + dh
        dz = h_new @ dA.T + db
        out, inp = dA.shape
        flops += 2 * n * inp * out + n * out
        if k:  # A is still zero at the first resolution: nothing to reuse yet.
            dz += dh @ plan.weights_after[k][layer].T
            flops += 2 * n * inp * out
        if rounding is not None:
            dz = np.round(dz / rounding) * rounding
        bit_ops += _upgrade_bit_ops(plan, layer, k, n)
        if layer < net.n_layers - 1:
            dh = net.hidden.increment(Z[layer], dz)
        H[layer] = h_new
        Z[layer] = Z[layer] + dz
    return bit_ops, flops

def _upgrade_bit_ops(plan: InferencePlan, layer: int, k: int, n: int) -> int:
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


def _logit_bounds(plan: InferencePlan, state: InferenceState) -> LogitBounds:
    """Bounds on the full-resolution logits of the active samples of ``state``.

    What the components not yet added can still contribute is an interval per entry
    (:func:`_remainder`); it is propagated through every layer in midpoint-radius
    arithmetic around the stored state, and through the monotone activations by their
    end points. The deviation of layer l's pre-activation, with dH the deviation of its
    input and e_W of its weights (W_full = A + e_W)::

        Z_full - Z = dH Aᵀ + (H + dH) e_Wᵀ + e_b
    """
    net, r = plan.network, state.resolution
    negative = plan.input_negative[state.samples]
    c_h, rad_h = _remainder(negative, plan.input_partition.tail_bound(r))
    flops = 0
    for layer in range(net.n_layers):
        tail = plan.weight_partitions[layer].tail_bound(r)
        A = plan.weights_after[r][layer]
        c_w, rad_w = _remainder(np.signbit(net.weights[layer]), tail)
        c_b, rad_b = _remainder(np.signbit(net.biases[layer]), tail)
        c_H = state.H[layer] + c_h
        w_mag = np.abs(A) + np.abs(c_w) + rad_w  # bounds |W_full|
        b_mag = np.abs(plan.biases_after[r][layer]) + np.abs(c_b) + rad_b
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
    plan: InferencePlan, h_mag: np.ndarray, w_mag: np.ndarray, b_mag: np.ndarray
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
    plan = plan_inference(model, X, input_partition, weight_partitions, clip=clip)
    policy = resolve_rule(rule)
    policy.check(model.output, rounding)
    return _resolutions(plan, policy, rounding)


def _resolutions(
    plan: InferencePlan, policy: Rule, rounding: float | None
) -> Iterator[InferenceResult]:
    state = plan.start()
    started = time.monotonic()
    while True:
        t0 = time.monotonic()
        upgrade = plan.advance(state, rounding)
        decision = plan.decide(upgrade.state, policy, started=started)
        state = decision.state
        yield InferenceResult(
            resolution=state.resolution,
            resolutions=plan.resolutions,
            outputs=state.outputs.copy(),  # copies: callers may modify what they get
            logits=state.logits.copy(),
            active=state.active,
            frozen_at=state.frozen_at.copy(),
            n_active=upgrade.n_active,
            bit_ops=upgrade.bit_ops,
            flops=upgrade.flops,
            decision_flops=decision.decision_flops,
            elapsed_s=time.monotonic() - t0,
            stop_reason=decision.stop,
            clipped=plan.clipped,
        )
        if decision.stop:
            return
