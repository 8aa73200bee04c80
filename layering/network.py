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
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .activations import (
    OUTPUT_FUNCTIONS,
    PiecewiseLinear,
    output_probabilities,
    resolve_activation,
)
from .decision import DecisionContext, LogitBounds, Rule, freeze_mask, resolve_rule
from .fused import fused_split, fused_split_usable
from .kernel import ProductKernel, resolve_kernel, scratch, thread_count
from .partition import Partition, _digit_dtype

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

# Elements per block when splitting the inputs: a block is range-checked and converted
# while it is in cache.
_SPLIT_BLOCK = 1 << 16
# Samples per row block of a resolution, at most: every layer's temporaries of a block
# stay in cache. Fewer, larger blocks are faster as long as every core gets some: each
# numpy call of a block costs a fixed overhead, and takes the GIL back when it ends while
# the other blocks' threads want it too.
_BLOCK_ROWS = 4096
_MIN_BLOCK_ROWS = 256
# A resolution splits into at least this many blocks of _MIN_BLOCK_ROWS or more (where
# it has the samples), to keep several cores busy.
_MIN_BLOCKS = 4
# Bytes of converted inputs per first-layer product: they stay in cache until the
# product has read them.
_OPERAND_BYTES = 1 << 21
# A first-layer product reads only the inputs that have a non-zero weight where they are
# at most this share of them: gathering more columns costs more than the product saves.
_GATHERED_INPUTS = 0.5


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
    new ones, unless asked to reuse them: ``advance(state, in_place=True)``), so a state
    can be kept, persisted or compared while later steps run.

    Attributes
    ----------
    resolution : int
        Resolutions added so far (0 before the first).
    samples : ndarray of int
        Indices of the active samples in the batch, increasing.
    H : tuple of ndarray
        ``H_1 ... H_{L-1}``, the input of every layer after the first, one row per active
        sample. The network's input ``H_0`` is not kept: it is the inputs cut to
        ``resolution`` components, which the plan gives
        (:meth:`InferencePlan.input_prefix`).
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

        ``H1 ... H{L-1}`` and ``Z1 ... Z{L}`` hold the layers; the inputs cut to
        ``resolution`` components are the plan's, not the state's.
        """
        arrays = {
            "resolution": np.array(self.resolution),
            "samples": self.samples,
            "logits": self.logits,
            "outputs": self.outputs,
            "frozen_at": self.frozen_at,
        }
        arrays.update({f"H{layer}": h for layer, h in enumerate(self.H, start=1)})
        arrays.update({f"Z{layer}": z for layer, z in enumerate(self.Z, start=1)})
        return arrays

    def _keep(self, keep: np.ndarray, frozen_at: np.ndarray) -> InferenceState:
        """This state with only the active samples in ``keep`` (a mask over them) left active."""
        if keep.all():
            return dataclasses.replace(self, frozen_at=frozen_at)
        # np.compress copies whole rows, about twice as fast as indexing by the mask
        return dataclasses.replace(
            self,
            samples=self.samples[keep],
            H=tuple(np.compress(keep, h, axis=0) for h in self.H),
            Z=tuple(np.compress(keep, z, axis=0) for z in self.Z),
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

    The first layer is linear in the inputs, so after resolution ``r`` its pre-activation
    is one product of the inputs and weights cut to ``r`` components,
    ``Z_1 = X_r A_rᵀ + b_r``; both are small integers on power-of-two grids, so the
    product is exact in the arithmetic its kernel chooses for that bound (float32 while
    every partial sum stays below 2**24 with :class:`~layered.layering.kernel.NumpyKernel`)
    and the first layer's increment ``ΔZ_1 = Z_1 - Z_1^{old}`` is bit for bit the one the
    two products of METHOD §4 give, at one product's cost. The inputs are kept once, as
    integers on their finest grid (``input_units``); every resolution cuts them by a shift.

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
    input_units: np.ndarray
    input_partition: Partition
    weight_partitions: tuple[Partition, ...]
    weight_parts: tuple[tuple[np.ndarray, ...], ...]
    bias_parts: tuple[tuple[np.ndarray, ...], ...]
    weights_after: tuple[tuple[np.ndarray, ...], ...]
    biases_after: tuple[tuple[np.ndarray, ...], ...]
    first_layer: tuple[FirstLayerProduct, ...]
    kernel: ProductKernel
    clipped: int

    @property
    def resolutions(self) -> int:
        return self.input_partition.m

    @property
    def n_samples(self) -> int:
        return self.input_units.shape[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the batch's outputs: ``(N,)`` (sigmoid) or ``(N, C)`` (softmax)."""
        net = self.network
        return (self.n_samples,) if net.output == "sigmoid" else (
            self.n_samples, net.weights[-1].shape[0])

    @cached_property
    def input_signed(self) -> bool:
        """Does any input truncate to a negative value?"""
        return bool(self.input_units.min(initial=0) < 0)

    def input_prefix(self, k: int, samples: np.ndarray | None = None) -> np.ndarray:
        """The inputs of ``samples`` (None: all) cut to their first ``k`` components (float64)."""
        units = self.input_units if samples is None else self.input_units[samples]
        if k == 0:
            return np.zeros(units.shape)
        shift = self.input_partition.points[k] - self.input_partition.points[-1]
        return np.ldexp(_cut(units, shift, self.input_signed), self.input_partition.points[k])

    def start(self) -> InferenceState:
        """The batch before the first resolution: every sample active, every Z = 0."""
        net, n = self.network, self.n_samples
        sizes = net.layer_sizes
        # Resolution 0 has Z = 0 everywhere, hence H_l = σ(0) in hidden layers (0.5 for
        # the piecewise-linear sigmoid).
        rest = float(net.hidden.value(np.zeros(1))[0])
        H = tuple(np.full((n, s), rest) for s in sizes[1:-1])
        Z = tuple(np.zeros((n, s)) for s in sizes[1:])
        zeros = np.zeros(self.output_shape)
        return InferenceState(0, np.arange(n), H, Z, zeros, zeros.copy(),
                              np.zeros(n, dtype=np.int64))

    def advance(
        self, state: InferenceState, rounding: float | None = None, *, in_place: bool = False
    ) -> ResolutionUpgrade:
        """Add the next resolution's components to the active samples of ``state``.

        Parameters
        ----------
        state : InferenceState
            A state of this plan (its batch, its samples).
        rounding : float, optional
            Round every increment ΔZ to this grid (see :func:`layered_inference`).
        in_place : bool
            Write the new ``H`` and ``Z`` over those of ``state``, which must not be used
            afterwards (:func:`layered_inference` does this: fresh arrays for every
            resolution cost page faults as large as the arithmetic).

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
        H, Z, bit_ops, flops = _upgrade(self, state, rounding, in_place)
        z_last = _last_logits(self.network, Z[-1])
        logits, outputs = state.logits.copy(), state.outputs.copy()
        logits[state.samples] = z_last
        outputs[state.samples] = output_probabilities(self.network.output, z_last)
        upgraded = InferenceState(k + 1, state.samples, H, Z, logits, outputs,
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
            logits=z_last.copy(),  # a rule may keep it; Z changes in place in later steps
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
        H = tuple(
            _saved(arrays, f"H{layer}", (k, sizes[layer])) for layer in range(1, len(sizes) - 1)
        )
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
    kernel: ProductKernel | str = "auto",
    device: str | None = None,
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
    units, clipped, signed = _input_units(network._check_input(X), input_partition, clip)
    w_parts, b_parts = [], []
    for layer, (w, b, p) in enumerate(zip(network.weights, network.biases, pws, strict=True)):
        wc = p.components(w, clip=clip, name=f"layer {layer + 1} weights W{layer + 1}")
        bc = p.components(b, clip=clip, name=f"layer {layer + 1} bias b{layer + 1}")
        clipped += _out_of_range(w, p) + _out_of_range(b, p) if clip else 0
        w_parts.append(tuple(wc.value(i) for i in range(p.m)))
        b_parts.append(tuple(bc.value(i) for i in range(p.m)))
    weights_after = _accumulated(w_parts)
    product_kernel = resolve_kernel(kernel, device)
    first_layer = tuple(
        _first_layer_product(input_partition, pws[0], weights_after[k][0], k, product_kernel)
        for k in range(1, input_partition.m + 1)
    )
    plan = InferencePlan(
        network,
        units,
        input_partition,
        pws,
        tuple(w_parts),
        tuple(b_parts),
        weights_after,
        _accumulated(b_parts),
        first_layer,
        product_kernel,
        clipped,
    )
    plan.__dict__["input_signed"] = signed  # known from the split: no pass over the units
    return plan


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


def _input_units(x: np.ndarray, p: Partition, clip: bool) -> tuple[np.ndarray, int, bool]:
    """The inputs truncated to every component of ``p``, as integers on its finest grid.

    Returns ``trunc(x / 2**p_m)`` in the narrowest signed integer type that holds the
    partition's span, how many values were clipped, and whether any integer is negative.
    One blockwise pass over ``x``: each block is range-checked while it is in cache (its
    smallest value also says whether it truncates to a negative integer), then scaled and
    truncated by the float-to-integer conversion itself (which rounds toward zero), so no
    float64 temporary of the whole input is made. An input that truncates to ``u`` units
    is ``u * 2**p_m``; cut to ``k`` components it is ``_cut(u, p_k - p_m) * 2**p_k``.
    """
    clipped = 0
    if clip:
        x, clipped = p.clip(x, "input X")
    units = np.empty(x.shape, dtype=_digit_dtype(p.points[0] - p.points[-1]))
    flat, out = x.reshape(-1), units.reshape(-1)
    scale, limit = math.ldexp(1.0, -p.points[-1]), p.limit
    # Where numba is installed: the same integers in one compiled pass (layering.fused),
    # as the one component of the partition (p_0, p_m)
    whole = (p.points[0], p.points[-1])
    if fused_split_usable(flat, [units.dtype], whole):
        _, bad, _, lowest = fused_split(np.ascontiguousarray(flat), out.reshape(1, -1), whole,
                                        limit, None, 0, thread_count())
        if bad:
            p.check(x, "input X")  # raises, naming the value
        return units, clipped, lowest < 0

    def convert(start: int, stop: int) -> float | None:
        """The smallest value of ``flat[start:stop]``, None if one is out of range."""
        smallest = limit
        for first in range(start, stop, _SPLIT_BLOCK):
            last = min(stop, first + _SPLIT_BLOCK)
            block = flat[first:last]
            low = block.min()
            if not (block.max() < limit and low > -limit):  # also catches NaN
                return None
            smallest = min(smallest, float(low))
            np.multiply(block, scale, out=out[first:last], casting="unsafe")
        return smallest

    # numpy releases the GIL in these loops, so parts of a large input convert in
    # parallel on the row blocks' threads, taken in turn by whichever is free.
    parts = range(0, flat.size, 8 * _SPLIT_BLOCK)
    if len(parts) < 2 or thread_count() < 2:
        lows = [convert(0, flat.size)]
    else:
        stops = [min(flat.size, start + 8 * _SPLIT_BLOCK) for start in parts]
        lows = list(_block_workers().map(convert, parts, stops))
    if any(low is None for low in lows):
        p.check(x, "input X")  # raises, naming the value
    # trunc(v * scale) < 0 exactly where v * scale <= -1 (the product is exact)
    return units, clipped, min((v for v in lows if v is not None), default=0.0) * scale <= -1.0


def _cut(
    units: np.ndarray, shift: int, signed: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """Integers ``units`` truncated toward zero to multiples of ``2**shift``, in those units.

    Written to ``out`` if given (shaped and typed like ``units``), except that ``units``
    themselves are returned when ``shift`` is 0.
    """
    if shift == 0:
        return units
    if not signed:
        return np.right_shift(units, shift, out=out)
    cut = np.abs(units, out=out)
    np.right_shift(cut, shift, out=cut)  # an arithmetic shift would round toward -inf
    return np.negative(cut, out=cut, where=units < 0)


@dataclass(frozen=True, eq=False)
class FirstLayerProduct:
    """The first layer's product at one resolution: inputs and weights cut to ``k`` components.

    ``Z_1 - b = (_cut(input_units[:, inputs], shift) @ weights) * scale``, exact:
    ``weights`` is the kernel's prepared ``A_kᵀ`` (its rows for ``inputs``) in units of
    its grid, and ``dtype`` the operand type in which the kernel computes the product
    exactly under the bound ``max_partial_sum`` on every partial sum. ``inputs`` (None:
    every input) are the inputs whose weights are not all zero yet, where they are few:
    the others would add exact zeros, so the product is the same at a fraction of the cost.
    """

    shift: int
    weights: np.ndarray
    scale: float
    dtype: np.dtype
    max_partial_sum: int
    inputs: np.ndarray | None = None


def _first_layer_product(
    px: Partition, pw: Partition, accumulated: np.ndarray, k: int, kernel: ProductKernel
) -> FirstLayerProduct:
    """:class:`FirstLayerProduct` for ``k`` components of the inputs and of ``accumulated``.

    The first components of small weights are zero (paper's MNIST model: 2 of 784 inputs
    have a non-zero weight after one component, 171 after two); the product then reads
    only the inputs that have one, where they are few enough (``_GATHERED_INPUTS``).
    """
    max_x = (1 << (px.points[0] - px.points[k])) - 1
    max_w = (1 << (pw.points[0] - pw.points[k])) - 1
    bound = accumulated.shape[1] * max_x * max_w
    dtype = kernel.dtype_for(bound, max(max_x, max_w))
    digits = np.ldexp(accumulated, -pw.points[k]).T  # exact integers, (in, out)
    # (one column, of zeros, where no input has a weight yet: kernels need an inner size)
    used = np.flatnonzero(digits.any(axis=1)) if digits.any() else np.arange(1)
    inputs = used if len(used) <= _GATHERED_INPUTS * len(digits) else None
    if inputs is not None:
        digits = digits[inputs]
    scale = math.ldexp(1.0, px.points[k] + pw.points[k])
    return FirstLayerProduct(
        px.points[k] - px.points[-1], kernel.prepare(digits, dtype), scale, dtype, bound,
        inputs,
    )


def _first_layer(
    plan: InferencePlan, rows: slice | np.ndarray, k: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``Z_1`` after ``k`` resolutions (k >= 1) for the samples ``rows``, float64, exact.

    Written to ``out`` if given (one row per sample).
    """
    step = plan.first_layer[k - 1]
    z = _input_product(plan, rows, step.shift, step.weights, step.dtype, out, step.inputs)
    z *= step.scale
    z += plan.biases_after[k][0]
    return z


def _input_product(
    plan: InferencePlan, rows: slice | np.ndarray, shift: int, weights: np.ndarray,
    dtype: np.dtype, out: np.ndarray | None = None, inputs: np.ndarray | None = None,
) -> np.ndarray:
    """``_cut(input_units[rows][:, inputs], shift) @ weights`` by the plan's kernel, as float64.

    ``weights`` is prepared by the kernel in ``dtype``, in which the product is exact;
    ``inputs`` (None: every column) are the input columns it has rows for. The rows go
    in parts small enough to stay in cache, each gathered (rows given by index), cut and
    converted to ``dtype`` in buffers of this thread's, reused by every part and every
    block, so the kernel finds them ready (a host kernel then takes them as they are)
    and no block maps fresh memory. Written to ``out`` if given.
    """
    units = plan.input_units
    indices = None if isinstance(rows, slice) else rows
    if isinstance(rows, slice):
        units = units[rows]
    n, inner = units.shape[0] if indices is None else len(indices), units.shape[1]
    width = inner if inputs is None else len(inputs)
    gathered = 0 if indices is None else inner * units.itemsize  # bytes per row gathered
    step = max(1, _OPERAND_BYTES // (width * dtype.itemsize + gathered))
    for start in range(0, n, step):
        if indices is None:
            part = units[start : start + step]
        else:
            picked = indices[start : start + step]
            buffer = scratch("inference-rows", len(picked) * inner, units.dtype)
            part = np.take(units, picked, axis=0, out=buffer.reshape(len(picked), inner))
        if inputs is not None:
            buffer = scratch("inference-inputs", len(part) * width, part.dtype)
            part = np.take(part, inputs, axis=1, out=buffer.reshape(len(part), width))
        if shift:
            cut = scratch("inference-cut", part.size, part.dtype).reshape(part.shape)
            part = _cut(part, shift, plan.input_signed, out=cut)
        if part.dtype != dtype:
            operand = scratch("inference-operand", part.size, dtype).reshape(part.shape)
            np.copyto(operand, part, casting="unsafe")  # exact: dtype holds every digit
            part = operand
        product = plan.kernel.product(plan.kernel.prepare(part, dtype), weights)
        product = plan.kernel.to_host(product)
        if out is None:
            out = np.empty((n, product.shape[1]))
        out[start : start + step] = product
    assert out is not None  # (a block has rows)
    return out


def _buffer(name: str, rows: int, columns: int) -> np.ndarray:
    """A float64 ``(rows, columns)`` buffer of this thread's, reused by every block."""
    return scratch(f"inference-{name}", rows * columns, np.float64).reshape(rows, columns)


def _row_blocks(
    plan: InferencePlan, samples: np.ndarray
) -> list[tuple[slice, slice | np.ndarray]]:
    """The active ``samples`` in blocks: (positions among them, rows of the batch).

    Everything a resolution computes for a block (every layer's temporaries) stays in
    one core's cache, and no temporary is large enough to be mapped afresh from the
    operating system (page faults cost as much as the arithmetic). Blocks depend only on
    the number of samples, never on the machine, so every row goes through the same
    operations wherever it runs.
    """
    n = len(samples)
    count = max(1, -(-n // _BLOCK_ROWS), min(_MIN_BLOCKS, n // _MIN_BLOCK_ROWS))
    rows = -(-n // count)
    every = n == plan.n_samples
    return [(part, part if every else samples[part])
            for part in (slice(start, min(n, start + rows)) for start in range(0, n, rows))]


def _over_blocks(blocks: Sequence[_Block], work: Callable[[_Block], None]) -> None:
    """``work(block)`` for every block, on a thread per core where there are several.

    numpy and the product kernels release the GIL in their loops, so all of a block's
    work (products, activations, scaling, bookkeeping) runs in parallel with the other
    blocks'. Each block's products then run on one thread: BLAS (limited to one thread
    while blocks run, see :class:`_BlasThreads`) and torch (one thread in these workers,
    :func:`_torch_on_one_thread`), so no second pool of threads contends for the cores,
    spinning at its barriers. Blocks are taken in turn by whichever worker is free, so a
    core slowed by other load leaves its share to the others. ``work`` must write only
    its own block's rows.
    """
    if len(blocks) < 2 or thread_count() < 2:
        for block in blocks:
            work(block)
        return
    with _BLAS_THREADS.one():
        for _ in _block_workers().map(partial(_in_worker, work), blocks):
            pass


_Block = TypeVar("_Block")
_workers: tuple[int, ThreadPoolExecutor] | None = None
_workers_lock = threading.Lock()
_worker_state = threading.local()


def _block_workers() -> ThreadPoolExecutor:
    """The process's threads for row blocks, one per core (made again after a fork)."""
    global _workers
    with _workers_lock:
        if _workers is None or _workers[0] != os.getpid():
            pool = ThreadPoolExecutor(thread_count(), thread_name_prefix="layering-blocks")
            _workers = (os.getpid(), pool)
        return _workers[1]


def _in_worker(work: Callable[[_Block], None], block: _Block) -> None:
    if not getattr(_worker_state, "torch_on_one_thread", False):
        _worker_state.torch_on_one_thread = _torch_on_one_thread()
    work(block)


_torch_threads_lock = threading.Lock()


def _torch_on_one_thread() -> bool:
    """Make torch run this thread's operations on one thread, if torch is imported.

    Under torch's OpenMP backend the intra-op thread count is a setting of each thread,
    taken from a process default when the thread first uses torch;
    ``torch.set_num_threads`` sets both. So this thread takes the default first, then sets
    one thread, and a short-lived thread puts the default back: torch elsewhere in the
    process (the caller's threads, threads started later) keeps its threads. Returns
    whether torch was there to set.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    with _torch_threads_lock:
        default = torch.get_num_threads()  # this thread takes the default now
        if default != 1:
            torch.set_num_threads(1)
            restore = threading.Thread(target=torch.set_num_threads, args=(default,))
            restore.start()
            restore.join()
    return True


class _BlasThreads:
    """Limits BLAS to one thread while row blocks run on their own threads.

    Calls overlap when several threads run inferences: the first limits BLAS, the last
    puts back what it found. Without threadpoolctl (a dependency of scikit-learn) BLAS
    keeps its threads: slower, never inexact.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limit: Any = None

    @contextmanager
    def one(self) -> Iterator[None]:
        controller = _blas_controller()
        if controller is None:
            yield
            return
        with self._lock:
            if self._users == 0:
                self._limit = controller.limit(limits=1)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._limit.restore_original_limits()


_BLAS_THREADS = _BlasThreads()


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded (numpy's), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


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
    plan: InferencePlan, state: InferenceState, rounding: float | None, in_place: bool
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], int, int]:
    """Add the next component of the input and of every layer to the active samples.

    Returns the new ``H`` and ``Z`` (new arrays), bit operations and flops. The first
    layer's new ``Z_1`` is its exact product after ``k + 1`` components (with rounding,
    the stored ``Z_1`` plus the rounded difference of the exact products after and
    before). Every later layer takes the two products of METHOD §4 from the change of its
    input, ``ΔH = σ(Z + ΔZ) - σ(Z)``, where ``σ(Z)`` is the stored ``H``. The work goes
    by row blocks (:func:`_row_blocks`); ``in_place`` writes each block over the state's
    own rows once they are read.
    """
    net, k, n = plan.network, state.resolution, len(state.samples)
    sizes = net.layer_sizes
    H = state.H if in_place else tuple(np.empty((n, s)) for s in sizes[1:-1])
    Z = state.Z if in_place else tuple(np.empty((n, s)) for s in sizes[1:])

    def upgrade(block: tuple[slice, slice | np.ndarray]) -> None:
        # Every array a block makes is one of its thread's buffers or its rows of H and Z:
        # fresh memory would cost page faults as large as the arithmetic.
        part, rows = block
        if rounding is None:
            z = _first_layer(plan, rows, k + 1, out=Z[0][part])
        else:
            z = _first_layer(plan, rows, k + 1)
            before = _first_layer(plan, rows, k) if k else 0.0
            z = np.add(state.Z[0][part], _rounded(z - before, rounding), out=Z[0][part])
        for layer in range(1, net.n_layers):
            m, width, out = len(z), sizes[layer], sizes[layer + 1]
            h = net.hidden.value(z, out=_buffer("h", m, width))
            dz = np.matmul(h, plan.weight_parts[layer][k].T, out=_buffer("dz", m, out))
            dz += plan.bias_parts[layer][k]
            if k:  # A is still zero at the first resolution: nothing to reuse yet.
                dh = np.subtract(h, state.H[layer - 1][part], out=_buffer("dh", m, width))
                dz += np.matmul(dh, plan.weights_after[k][layer].T, out=_buffer("dhA", m, out))
            H[layer - 1][part] = h
            if rounding is not None:
                dz = _rounded(dz, rounding)
            z = np.add(state.Z[layer][part], dz, out=Z[layer][part])

    _over_blocks(_row_blocks(plan, state.samples), upgrade)
    bit_ops = sum(_upgrade_bit_ops(plan, layer, k, n) for layer in range(net.n_layers))
    return H, Z, bit_ops, _upgrade_flops(plan, k, n, rounding)


def _upgrade_flops(plan: InferencePlan, k: int, n: int, rounding: float | None) -> int:
    """Floating-point operations :func:`_upgrade` executes for ``n`` samples at component ``k``."""
    out, inp = plan.network.weights[0].shape
    first = (2 * inp + 1) * out * n
    flops = first * (2 if rounding is not None and k else 1)
    for w in plan.network.weights[1:]:
        out, inp = w.shape
        flops += (2 * inp * out + out) * n + (2 * inp * out * n if k else 0)
    return flops


def _rounded(dz: np.ndarray, rounding: float) -> np.ndarray:
    """``dz`` rounded to the grid ``rounding`` (nearest, ties to even)."""
    return np.round(dz / rounding) * rounding


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

    The first layer takes it in closed form (:class:`_FirstLayerBound`); the work goes by
    row blocks, as the upgrades do.
    """
    net, r, n = plan.network, state.resolution, len(state.samples)
    first = _FirstLayerBound.of(plan, r)
    layers = [_LayerBound.of(plan, layer, r) for layer in range(1, net.n_layers)]
    lo, hi = np.empty((n, net.weights[-1].shape[0])), np.empty((n, net.weights[-1].shape[0]))

    def bound(block: tuple[slice, slice | np.ndarray]) -> None:
        part, rows = block
        deviation = first.deviation(plan, rows)
        b_lo, b_hi = state.Z[0][part] + deviation[0], state.Z[0][part] + deviation[1]
        for layer, bound in enumerate(layers, start=1):
            s_lo, s_hi = net.hidden.interval(b_lo, b_hi)
            b_lo, b_hi = bound.interval(plan, state.H[layer - 1][part], s_lo, s_hi)
            b_lo += state.Z[layer][part]
            b_hi += state.Z[layer][part]
        lo[part], hi[part] = b_lo, b_hi

    _over_blocks(_row_blocks(plan, state.samples), bound)
    flops = first.flops(plan, n) + sum(8 * n * bound.A.size for bound in layers)
    if net.output == "sigmoid":
        lo, hi = lo[:, 0], hi[:, 0]
    return LogitBounds(lower=lo, upper=hi, flops=flops)


@dataclass(frozen=True)
class _LayerBound:
    """What the weights and bias of one layer after the first can still change, at ``r``."""

    A: np.ndarray
    c_w: np.ndarray
    rad_w: np.ndarray
    c_b: np.ndarray
    rad_b: np.ndarray
    w_mag: np.ndarray
    b_mag: np.ndarray

    @classmethod
    def of(cls, plan: InferencePlan, layer: int, r: int) -> _LayerBound:
        net, tail = plan.network, plan.weight_partitions[layer].tail_bound(r)
        c_w, rad_w = _remainder(np.signbit(net.weights[layer]), tail)
        c_b, rad_b = _remainder(np.signbit(net.biases[layer]), tail)
        A = plan.weights_after[r][layer]
        w_mag = np.abs(A) + np.abs(c_w) + rad_w  # bounds |W_full|
        b_mag = np.abs(plan.biases_after[r][layer]) + np.abs(c_b) + rad_b
        return cls(A, c_w, rad_w, c_b, rad_b, w_mag, b_mag)

    def interval(
        self, plan: InferencePlan, H: np.ndarray, s_lo: np.ndarray, s_hi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(Z_full - Z)`` bounds from the layer's input interval ``[s_lo, s_hi]``."""
        c_h = 0.5 * (s_lo + s_hi) - H
        rad_h = 0.5 * (s_hi - s_lo) + _EPS * (np.abs(s_lo) + np.abs(s_hi))
        c_H = H + c_h
        center = c_h @ self.A.T + c_H @ self.c_w.T + self.c_b
        radius = rad_h @ self.w_mag.T + np.abs(c_H) @ self.rad_w.T + self.rad_b
        radius += _rounding_margin(plan, np.abs(c_H) + rad_h, self.w_mag, self.b_mag)
        return center - radius, center + radius


@dataclass(frozen=True)
class _FirstLayerBound:
    """The first layer of :func:`_logit_bounds` in closed form, at resolution ``r``.

    An input's remainder is ``s t ± t`` (``t`` half the input's tail bound, ``s`` the
    input's sign) and a weight's ``s_w t_w ± t_w``; with ``H`` the inputs cut to ``r``
    components, which carry their sign (so ``|H + s t| = |H| + t``), the four products of
    a general layer become::

        center = t s Aᵀ + t_w H s_wᵀ + t t_w s s_wᵀ + c_b
        radius = t Σ_j |W|_max + t_w (Σ_j |H| + n_in t) + rad_b + margin

    where only ``H s_wᵀ`` and ``Σ_j |H|`` depend on the sample when no input is
    negative: one exact product of small integers, ``H [s_wᵀ | 1]``, by the plan's kernel.
    """

    r: int
    t: float
    t_w: float
    signs: np.ndarray
    against: np.ndarray
    dtype: np.dtype
    A: np.ndarray
    center: np.ndarray
    radius: np.ndarray
    margin: tuple[float, float]

    @classmethod
    def of(cls, plan: InferencePlan, r: int) -> _FirstLayerBound:
        net, px, pw = plan.network, plan.input_partition, plan.weight_partitions[0]
        A = plan.weights_after[r][0]
        inp = A.shape[1]
        t, t_w = 0.5 * px.tail_bound(r), 0.5 * pw.tail_bound(r)
        signs = np.where(np.signbit(net.weights[0]), -1.0, 1.0)
        c_b, rad_b = _remainder(np.signbit(net.biases[0]), pw.tail_bound(r))
        w_mag = np.abs(A) + 2 * t_w  # bounds |W_full|
        b_mag = np.abs(plan.biases_after[r][0]) + np.abs(c_b) + rad_b
        max_h = (1 << (px.points[0] - px.points[r])) - 1  # |H| in units of its grid
        dtype = plan.kernel.dtype_for(inp * max_h, max_h)
        against = plan.kernel.prepare(np.hstack([signs.T, np.ones((inp, 1))]), dtype)
        center = t * A.sum(axis=1) + (t * t_w) * signs.sum(axis=1) + c_b
        radius = t * w_mag.sum(axis=1) + t_w * inp * t + rad_b
        scale = _margin_scale(plan, inp + 1)
        margin = (scale * float(w_mag.max()), scale * (2 * inp * t * float(w_mag.max())
                                                       + float(b_mag.max())))
        return cls(r, t, t_w, signs, against, dtype, A, center, radius, margin)

    def deviation(
        self, plan: InferencePlan, rows: slice | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on ``Z_1(full) - Z_1`` for the samples ``rows`` of the batch."""
        px = plan.input_partition
        shift, out = px.points[self.r] - px.points[-1], self.A.shape[0]
        product = np.ldexp(_input_product(plan, rows, shift, self.against, self.dtype),
                           px.points[self.r])
        h_signs, h_abs = product[:, :out], product[:, out:]
        center = self.center + self.t_w * h_signs
        if plan.input_signed:  # s = 1 - 2 [x < 0]: per-sample sums, and Σ|H| apart from Σ H
            units = plan.input_units[rows]
            both = (units < 0) @ np.hstack([self.A.T, self.signs.T])
            center -= 2 * self.t * both[:, :out] + (2 * self.t * self.t_w) * both[:, out:]
            h_abs = np.ldexp(np.abs(_cut(units, shift, True)).sum(axis=1, keepdims=True,
                                                                 dtype=np.float64),
                             px.points[self.r])
        radius = self.radius + self.t_w * h_abs + (self.margin[0] * h_abs + self.margin[1])
        return center - radius, center + radius

    def flops(self, plan: InferencePlan, n: int) -> int:
        out, inp = self.A.shape
        return 2 * n * inp * (out + 1) + (4 * n * inp * out if plan.input_signed else 0)


def _remainder(negative: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """Center and radius of what the components not yet added can add to each entry.

    Components are sign-magnitude: they all carry the value's sign, which is known from
    the first resolution on (the sign bit travels with the first component). So the
    remainder lies in ``[0, tail]`` for a non-negative value and ``[-tail, 0]`` for a
    negative one.
    """
    return np.where(negative, -0.5 * tail, 0.5 * tail), np.full(negative.shape, 0.5 * tail)


def _margin_scale(plan: InferencePlan, inner: int) -> float:
    """``4 (R + 2) (inner + 2) ε``: the rounding allowance per unit of ``Σ|h||w|`` of one
    layer's products over ``inner`` terms (see :func:`_rounding_margin`)."""
    return 4 * (plan.resolutions + 2) * (inner + 2) * _EPS


def _rounding_margin(
    plan: InferencePlan, h_mag: np.ndarray, w_mag: np.ndarray, b_mag: np.ndarray
) -> np.ndarray:
    """A floating-point safety margin per sample for one layer's bounds.

    Covers the rounding of the stored state (R increments), of the bound arithmetic and
    of a float64 reference pass: each is at most ``(inner + 2) ε Σ|h||w|`` per product,
    and ``Σ_j |h_j||w_j| <= Σ_j |h_j| max|w|``.
    """
    scale = _margin_scale(plan, h_mag.shape[1] + 1)
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
    kernel: ProductKernel | str = "auto",
    device: str | None = None,
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
    kernel : {"auto", "numpy", "torch"} or ProductKernel
        Computes the exact small-integer products of the first layer (and of the certified
        rule's bounds on it), in the arithmetic it chooses for their partial-sum bounds;
        ``"auto"`` (default) is the fastest exact engine here
        (:func:`~layered.layering.kernel.resolve_kernel`). Every kernel gives the same
        results.
    device : {"cpu", "cuda"}, optional
        Where those products run (default: the kernel's choice).

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

    Each resolution works through the active samples in row blocks, on a thread per core
    (the inputs are split the same way). While blocks run, BLAS is limited to one thread
    and torch runs on one thread in the block workers, so the cores are not shared
    between thread pools; BLAS gets its threads back between resolutions, and torch's
    setting for the caller's threads never changes. Results do not depend on the number
    of cores.
    """
    if rounding is not None and not (math.isfinite(rounding) and rounding > 0):
        raise ValueError(f"rounding must be a positive grid step or None, got {rounding!r}")
    plan = plan_inference(model, X, input_partition, weight_partitions, clip=clip,
                          kernel=kernel, device=device)
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
        upgrade = plan.advance(state, rounding, in_place=True)  # nobody else sees state
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
