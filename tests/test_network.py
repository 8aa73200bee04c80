"""Layered network inference: exact incremental upgrades, active samples, costs, bad input.

Every layered result is compared with an independent one-shot forward pass of the network
truncated to r components (``reference_net`` in conftest.py).
"""

import gzip
import io
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.layering import (
    Deadline,
    DecisionContext,
    Network,
    Partition,
    PartitionRangeError,
    Rule,
    layered_inference,
    one_shot_cost,
    plan_inference,
)
from layered.layering import network as network_module
from layered.layering.activations import PiecewiseLinear, leaky_relu, pl_sigmoid, relu
from layered.layering.kernel import NumpyKernel

HIDDEN = ("relu", "leaky-relu", "pl-sigmoid")
OUTPUTS = (("sigmoid", 1), ("softmax", 5))

PIXELS = Partition((0, -1, -2, -3, -4))  # one pixel bit per component (METHOD §6)
WEIGHTS = Partition((1, -1, -3, -5, -7))  # two weight bits per component
# METHOD §6: one bit per component, layer by layer.
PAPER_WEIGHTS = [Partition((p, p - 1, p - 2, p - 3, p - 4)) for p in (-1, 0, 1)]


class FreezeSamples(Rule):
    """Freezes the given sample indices after a given resolution."""

    def __init__(self, samples, at):
        self.samples, self.at = np.asarray(samples), at

    def decide(self, ctx):
        return np.isin(ctx.samples, self.samples) & (ctx.resolution == self.at)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize(("output", "n_out"), OUTPUTS)
def test_each_resolution_equals_truncated_one_shot_pass(
    reference_net, mnist_like, hidden, output, n_out
):
    ref = reference_net(7, (784, 20, 12, n_out), hidden, output)
    X = mnist_like(1, 300)
    pws = [WEIGHTS] * 3
    results = list(layered_inference(ref.network(), X, PIXELS, pws))
    assert [res.resolution for res in results] == [1, 2, 3, 4]
    for res in results:
        r = res.resolution
        np.testing.assert_allclose(res.logits, ref.logits(X, PIXELS, pws, r), rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.outputs, ref.outputs(X, PIXELS, pws, r), rtol=0, atol=1e-12)
        assert res.active.all() == (r < 4)
    assert results[-1].stop_reason == "completed"


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_uneven_partitions_and_depths_match_truncated_pass(random_case, data):
    ref, X, px, pws = random_case(data)
    for res in layered_inference(ref.network(), X, px, pws):
        expected = ref.logits(X, px, pws, res.resolution)
        np.testing.assert_allclose(res.logits, expected, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    z=st.floats(-8, 8, allow_nan=False),
    dz=st.floats(-8, 8, allow_nan=False),
    alpha=st.floats(0, 1),
)
def test_increment_equals_activation_difference(z, dz, alpha):
    references = [
        (relu(), lambda v: max(v, 0.0)),
        (leaky_relu(alpha), lambda v: v if v >= 0 else alpha * v),
        (pl_sigmoid(), lambda v: min(max(0.25 * v + 0.5, 0.0), 1.0)),
    ]
    for act, sigma in references:
        got = float(act.increment(np.array([z]), np.array([dz]))[0])
        assert got == pytest.approx(sigma(z + dz) - sigma(z), abs=1e-12)


def test_increment_uses_the_pre_activation():
    # METHOD §4: z = -0.5 -> z' = 0.3 gives 0.3 (feeding the post-activation 0 gives 0.8).
    z, dz = np.array([-0.5]), np.array([0.8])
    assert relu().increment(z, dz)[0] == pytest.approx(0.3)
    assert leaky_relu(0.1).increment(z, dz)[0] == pytest.approx(0.3 + 0.05)
    assert pl_sigmoid().increment(z, dz)[0] == pytest.approx(0.25 * 0.8)


def test_relu_increment_follows_the_method_table():
    z = np.array([-1.0, -1.0, 2.0, 2.0])
    dz = np.array([-1.0, 3.0, -5.0, 1.5])
    # (<0,<0) -> 0; (<0,>=0) -> z'; (>=0,<0) -> -z; (>=0,>=0) -> dz
    np.testing.assert_array_equal(relu().increment(z, dz), [0.0, 2.0, -2.0, 1.5])


def test_network_forward_matches_reference(reference_net, mnist_like):
    ref = reference_net(3, (784, 16, 10), "leaky-relu", "softmax")
    X = mnist_like(2, 50)
    net = ref.network()
    h = X
    for layer, (w, b) in enumerate(zip(ref.weights, ref.biases, strict=True)):
        z = h @ w.T + b
        h = np.where(z >= 0, z, 0.1 * z) if layer == 0 else z
    np.testing.assert_allclose(net.logits(X), h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(net.forward(X).sum(axis=1), 1.0)


def test_frozen_samples_keep_outputs_and_cost_nothing(reference_net, mnist_like):
    ref = reference_net(5, (784, 20, 20, 1), "relu", "sigmoid")
    X = mnist_like(3, 200)
    pws = [WEIGHTS] * 3
    frozen = np.arange(0, 200, 2)
    results = list(layered_inference(ref.network(), X, PIXELS, pws, FreezeSamples(frozen, 1)))
    at_one = ref.outputs(X, PIXELS, pws, 1)
    for res in results:
        r = res.resolution
        np.testing.assert_allclose(res.outputs[frozen], at_one[frozen], rtol=0, atol=1e-12)
        others = np.setdiff1d(np.arange(200), frozen)
        expected = ref.outputs(X, PIXELS, pws, r)[others]
        np.testing.assert_allclose(res.outputs[others], expected, rtol=0, atol=1e-12)
        assert res.n_active == (200 if r == 1 else 100)
    assert results[2].flops * 2 == pytest.approx(
        list(layered_inference(ref.network(), X, PIXELS, pws))[2].flops, rel=1e-12
    )
    np.testing.assert_array_equal(results[-1].frozen_at[frozen], 1)
    np.testing.assert_array_equal(np.delete(results[-1].frozen_at, frozen), 4)


def test_without_early_stops_bit_ops_add_up_to_one_shot(reference_net, mnist_like):
    ref = reference_net(8, (784, 20, 20, 1), "relu", "sigmoid")
    X = mnist_like(4, 64)
    pws = PAPER_WEIGHTS
    results = list(layered_inference(ref.network(), X, PIXELS, pws))
    bits, flops = one_shot_cost(ref.network(), PIXELS, pws, 64)
    assert sum(res.bit_ops for res in results) == bits
    # 1-bit components: resolution r costs (2r - 1)/R^2 of the products' bit operations.
    products = 64 * (784 * 20 + 20 * 20 + 20)
    bias_bits = 64 * (20 + 20 + 1)
    expected = [products * (2 * r - 1) + bias_bits for r in (1, 2, 3, 4)]
    assert [res.bit_ops for res in results] == expected
    # On float hardware a component product costs a full product: resolution 1 costs the
    # one-shot flops, later ones two products per layer.
    assert results[0].flops == flops < results[1].flops


def test_clipping_is_counted_and_equals_clipped_reference(reference_net, mnist_like):
    ref = reference_net(9, (784, 8, 1), "relu", "sigmoid")
    X = mnist_like(5, 30)
    narrow = Partition((-2, -3, -4, -5, -6))  # |a| < 0.25: some first-layer biases do not fit
    pws = [narrow, WEIGHTS]
    with pytest.raises(PartitionRangeError, match=r"layer 1 bias b1\[\d+\] = "):
        layered_inference(ref.network(), X, PIXELS, pws)
    results = list(layered_inference(ref.network(), X, PIXELS, pws, clip=True))
    assert results[-1].clipped == int((np.abs(ref.biases[0]) >= 0.25).sum()) > 0
    top = 0.25 - 2**-6  # the largest magnitude the partition represents
    clipped = replace(ref, biases=(np.clip(ref.biases[0], -top, top), ref.biases[1]))
    np.testing.assert_allclose(results[-1].logits, clipped.logits(X, PIXELS, pws, 4), atol=1e-12)


def test_rounding_puts_increments_on_the_grid():
    rng = np.random.default_rng(0)
    weights = [rng.integers(-7, 8, size=(6, 10)) / 8, rng.integers(-7, 8, size=(1, 6)) / 8]
    biases = [rng.integers(-7, 8, size=6) / 8, rng.integers(-7, 8, size=1) / 8]
    net = Network(weights, biases)
    X = rng.integers(0, 16, size=(50, 10)) / 16
    p = Partition((0, -2, -4))
    exact = list(layered_inference(net, X, p, [p, p]))
    # Inputs and weights are on the 2**-4 grid, so layer 1's Z is on 2**-8 and layer 2's
    # on 2**-12: rounding to that grid changes nothing...
    fine = list(layered_inference(net, X, p, [p, p], rounding=2**-12))
    for a, b in zip(exact, fine, strict=True):
        np.testing.assert_array_equal(a.logits, b.logits)
    # ...while a coarse grid keeps the logits on that grid and near the exact ones.
    coarse = list(layered_inference(net, X, p, [p, p], rounding=2**-2))
    for a, b in zip(exact, coarse, strict=True):
        np.testing.assert_array_equal(b.logits * 4, np.round(b.logits * 4))
        assert np.max(np.abs(a.logits - b.logits)) < 2.0
    assert any(not np.array_equal(a.logits, b.logits) for a, b in zip(exact, coarse, strict=True))


def test_deadline_freezes_everyone_with_current_outputs(reference_net, mnist_like):
    ref = reference_net(11, (784, 10, 1), "relu", "sigmoid")
    X = mnist_like(6, 100)
    pws = [WEIGHTS] * 2
    results = list(layered_inference(ref.network(), X, PIXELS, pws, Deadline(0)))
    assert len(results) == 1 and results[0].stop_reason == "deadline"
    assert not results[0].active.any()
    np.testing.assert_allclose(results[0].outputs, ref.outputs(X, PIXELS, pws, 1), atol=1e-12)
    past = list(layered_inference(ref.network(), X, PIXELS, pws, Deadline(at=0.0)))
    assert past[-1].stop_reason == "deadline"
    later = list(layered_inference(ref.network(), X, PIXELS, pws, Deadline(3600)))
    assert [res.stop_reason for res in later] == [None, None, None, "completed"]


def test_validation_happens_before_iteration(reference_net):
    ref = reference_net(0, (4, 3, 1))
    net = ref.network()
    X = np.full((2, 4), 0.5)
    p = Partition((1, 0, -1))
    cases = [
        (np.full((2, 5), 0.5), [p, p], ValueError, r"shape \(N, 4\).*got \(2, 5\)"),
        (np.array([[0.5, np.nan, 0.5, 0.5]] * 2), [p, p], ValueError, "not finite"),
        (np.full((2, 4), 2.5), [p, p], PartitionRangeError, "input X"),
        (X, [p], ValueError, "1 weight partitions for a network of 2 layers"),
        (X, [p, Partition((1, 0))], ValueError, "same number R"),
        (X, [p, Partition((-2, -3, -4))], PartitionRangeError, "layer 2 (weights W2|bias b2)"),
    ]
    for x, pws, error, message in cases:
        with pytest.raises(error, match=message):
            layered_inference(net, x, p, pws)
    with pytest.raises(ValueError, match="unknown decision rule 'grey'"):
        layered_inference(net, X, p, [p, p], rule="grey")
    with pytest.raises(ValueError, match="rounding"):
        layered_inference(net, X, p, [p, p], rounding=0.0)
    with pytest.raises(ValueError, match="certified rule needs exact upgrades"):
        layered_inference(net, X, p, [p, p], rule="certified", rounding=2**-4)


def test_network_rejects_bad_layers():
    w, b = np.ones((3, 4)), np.zeros(3)
    with pytest.raises(ValueError, match=r"biases\[0\] has shape \(2,\).*expected \(3,\)"):
        Network([w, np.ones((1, 3))], [np.zeros(2), np.zeros(1)])
    with pytest.raises(ValueError, match=r"weights\[1\] \(1, 2\) takes 2 inputs"):
        Network([w, np.ones((1, 2))], [b, np.zeros(1)])
    with pytest.raises(ValueError, match="unknown hidden activation 'tanh'"):
        Network([w, np.ones((1, 3))], [b, np.zeros(1)], hidden="tanh")
    with pytest.raises(ValueError, match="unknown output function 'linear'"):
        Network([w, np.ones((1, 3))], [b, np.zeros(1)], output="linear")
    with pytest.raises(ValueError, match="sigmoid output needs 1 output unit"):
        Network([w], [b], output="sigmoid")
    with pytest.raises(ValueError, match="NaN/inf"):
        Network([np.full((1, 4), np.inf)], [np.zeros(1)])
    with pytest.raises(ValueError, match="alpha applies only"):
        Network([np.ones((1, 4))], [np.zeros(1)], hidden="relu", alpha=0.2)


def test_decision_context_sees_only_active_samples(reference_net, mnist_like):
    seen = []

    class Record(Rule):
        def decide(self, ctx: DecisionContext):
            seen.append((ctx.resolution, ctx.samples.copy(), ctx.outputs.copy()))
            return ctx.samples < 10

    ref = reference_net(12, (784, 6, 1))
    X = mnist_like(7, 30)
    list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2, Record()))
    assert [len(s) for _, s, _ in seen] == [30, 20, 20]
    np.testing.assert_array_equal(seen[1][1], np.arange(10, 30))
    expected = ref.outputs(X, PIXELS, [WEIGHTS] * 2, 2)[10:]
    np.testing.assert_allclose(seen[1][2], expected, rtol=0, atol=1e-12)


def _real_mnist(directory, n):
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(16 + n * 784)[16:], dtype=np.uint8)
    return pixels.reshape(n, 784) / 256.0


def test_real_mnist_images_under_the_paper_partitions(reference_net, shared_mnist_dir):
    if not (shared_mnist_dir / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no MNIST test images in {shared_mnist_dir}")
    X = _real_mnist(shared_mnist_dir, 300)
    ref = reference_net(13, (784, 20, 20, 1), "relu", "sigmoid")
    for res in layered_inference(ref.network(), X, PIXELS, PAPER_WEIGHTS):
        expected = ref.logits(X, PIXELS, PAPER_WEIGHTS, res.resolution)
        np.testing.assert_allclose(res.logits, expected, rtol=0, atol=1e-12)


# --- The step API: one resolution at a time, on chunks, through saved states.
def _saved_and_loaded(state):
    """``state.to_arrays()`` through an ``.npz`` file, as a pipeline persists it."""
    buffer = io.BytesIO()
    np.savez(buffer, **state.to_arrays())
    buffer.seek(0)
    return dict(np.load(buffer))


@pytest.mark.parametrize(
    ("output", "n_out", "rule"),
    [("sigmoid", 1, None), ("sigmoid", 1, "gray-zone"), ("sigmoid", 1, "certified"),
     ("softmax", 5, "margin"), ("softmax", 5, "certified")],
)
def test_chunked_steps_through_saved_states_equal_layered_inference(
    reference_net, mnist_like, output, n_out, rule
):
    ref = reference_net(21, (784, 20, 12, n_out), "relu", output)
    net, X, pws = ref.network(), mnist_like(9, 700), PAPER_WEIGHTS
    direct = list(layered_inference(net, X, PIXELS, pws, rule=rule, clip=True))
    chunks = [(0, 250), (250, 251), (251, 700)]
    saved = [None] * len(chunks)
    for res in direct:
        decided, costs = [], np.zeros(4, dtype=np.int64)
        for c, (a, b) in enumerate(chunks):
            plan = plan_inference(net, X[a:b], PIXELS, pws, clip=True)  # a fresh plan each time
            state = plan.start() if saved[c] is None else plan.restore(saved[c])
            upgrade = plan.advance(state)
            decision = plan.decide(upgrade.state, rule)
            saved[c] = _saved_and_loaded(decision.state)
            decided.append(decision.state)
            costs += (upgrade.n_active, upgrade.bit_ops, upgrade.flops, decision.decision_flops)
        for field in ("outputs", "logits", "active", "frozen_at"):
            joined = np.concatenate([getattr(s, field) for s in decided])
            assert np.array_equal(joined, getattr(res, field)), (field, res.resolution)
        assert tuple(costs) == (res.n_active, res.bit_ops, res.flops, res.decision_flops)
        assert all(s.resolution == res.resolution for s in decided)


def test_a_restored_state_is_the_saved_one(reference_net, mnist_like):
    ref = reference_net(22, (784, 10, 3), "leaky-relu", "softmax")
    plan = plan_inference(ref.network(), mnist_like(10, 40), PIXELS, [WEIGHTS] * 2)
    state = plan.decide(plan.advance(plan.advance(plan.start()).state).state,
                        FreezeSamples(np.arange(0, 40, 3), 2)).state
    restored = plan.restore(_saved_and_loaded(state))
    assert restored.resolution == 2 and len(restored.samples) == 26
    for a, b in zip((*state.H, *state.Z), (*restored.H, *restored.Z), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    truncated = PIXELS.truncate(mnist_like(10, 40), 2)
    np.testing.assert_array_equal(plan.input_prefix(2, restored.samples),
                                  truncated[restored.samples])


def test_steps_refuse_states_that_do_not_fit(reference_net, mnist_like):
    ref = reference_net(23, (784, 6, 1))
    X = mnist_like(11, 30)
    plan = plan_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2)
    saved = _saved_and_loaded(plan.decide(plan.advance(plan.start()).state).state)
    larger = plan_inference(ref.network(), mnist_like(11, 40), PIXELS, [WEIGHTS] * 2)
    with pytest.raises(ValueError, match=r"'logits' has shape \(30,\), expected \(40,\)"):
        larger.restore(saved)
    smaller = plan_inference(ref.network(), X[:20], PIXELS, [WEIGHTS] * 2)
    with pytest.raises(ValueError, match=r"active samples outside 0\.\.19"):
        smaller.restore(saved)
    with pytest.raises(ValueError, match="no array 'Z2'"):
        plan.restore({k: v for k, v in saved.items() if k != "Z2"})
    with pytest.raises(ValueError, match="advance first"):
        plan.decide(plan.start())
    state = plan.start()
    for _ in range(plan.resolutions):
        state = plan.advance(state).state
    with pytest.raises(ValueError, match="already holds all 4 resolutions"):
        plan.advance(state)


# --- Exact small-integer products of the first layer, through the product kernel.
class RecordingKernel(NumpyKernel):
    """The numpy kernel, recording the operand dtypes it is asked for and its products."""

    def __init__(self):
        self.products = 0

    def product(self, a, b):
        self.products += 1
        return super().product(a, b)


class Float64Kernel(RecordingKernel):
    """Always float64: exact for every partial-sum bound in these tests."""

    def dtype_for(self, max_partial_sum, max_digit):
        return np.dtype(np.float64)


def _exact_logits(X, W, b, px, pw):
    """One layer's Z on inputs and weights truncated by the partitions, in Python integers."""
    xq = [[int(v) for v in row] for row in np.trunc(X / 2.0 ** px.points[-1])]
    wq = [int(v) for v in np.trunc(W[0] / 2.0 ** pw.points[-1])]
    scale = 2.0 ** (px.points[-1] + pw.points[-1])
    return np.array([float(sum(x * w for x, w in zip(row, wq, strict=True)) * scale) + b[0]
                     for row in xq])


@pytest.mark.parametrize(("inputs", "dtype"), [(258, np.float32), (259, np.float64)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_first_layer_runs_in_float32_exactly_up_to_its_partial_sum_limit(inputs, dtype, sign):
    # 8-bit inputs and weights at their largest digits: the final product's partial sums
    # reach inputs * 255 * 255, which is below 2**24 for 258 inputs and above it (and odd,
    # so float32 would round it) for 259.
    p = Partition((8, 4, 0))
    X = np.full((3, inputs), sign * 255.0)
    X[1, : inputs // 2] = sign * 17.0
    W, b = np.full((1, inputs), 255.0), np.array([-48.0])  # on both grids
    kernel = RecordingKernel()
    plan = plan_inference(Network([W], [b]), X, p, [p], kernel=kernel)
    assert [step.dtype for step in plan.first_layer] == [np.float32, np.dtype(dtype)]
    assert plan.first_layer[-1].max_partial_sum == inputs * 255 * 255
    results = list(layered_inference(Network([W], [b]), X, p, [p], kernel=kernel))
    assert kernel.products > 0
    assert np.array_equal(results[-1].logits, _exact_logits(X, W, b, p, p))
    coarse = Partition((8, 4))  # the first resolution: both cut to one 4-bit component
    assert np.array_equal(results[0].logits, _exact_logits(X, W, b, coarse, coarse))


@pytest.mark.parametrize(("lowest", "signed"), [
    (-(2.0**-4), True),  # exactly one unit below zero
    (-(2.0**-5), False),  # truncates to 0
    (-0.0, False),
    (0.25, False),
])
@pytest.mark.parametrize("parallel", [False, True])
def test_split_knows_whether_an_input_truncates_below_zero(monkeypatch, lowest, signed, parallel):
    monkeypatch.setattr(network_module, "_SPLIT_BLOCK", 64 if parallel else 1 << 16)
    X = np.full((40, 50), 0.5)
    X[-1, -1] = lowest  # in the last part the split converts
    plan = plan_inference(Network([np.ones((1, 50))], [np.zeros(1)]), X, PIXELS, [WEIGHTS])
    assert plan.input_signed is signed
    assert plan.input_signed == bool((plan.input_units < 0).any())
    assert np.array_equal(plan.input_prefix(4), PIXELS.truncate(X, 4))


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_exact_kernel_gives_the_same_inference_bit_for_bit(random_case, data):
    ref, X, px, pws = random_case(data)
    rule = data.draw(st.sampled_from([None, "margin", "certified"]), label="rule")
    kernel = Float64Kernel()
    default = list(layered_inference(ref.network(), X, px, pws, rule))
    other = list(layered_inference(ref.network(), X, px, pws, rule, kernel=kernel))
    assert kernel.products > 0 and len(default) == len(other)
    for a, b in zip(default, other, strict=True):
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.frozen_at, b.frozen_at)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_inputs_cut_to_k_components_equal_truncation(random_case, data):
    ref, X, px, pws = random_case(data)
    X[0, :4] = [-(2.0 ** px.points[-1]) / 2, -0.0, 2.0 ** px.points[-1], -(2.0 ** px.points[1])]
    plan = plan_inference(ref.network(), X, px, pws)
    samples = np.arange(0, len(X), 3)
    for k in range(px.m + 1):
        assert np.array_equal(plan.input_prefix(k), px.truncate(X, k))
        assert np.array_equal(plan.input_prefix(k, samples), px.truncate(X, k)[samples])


def test_advance_in_place_reuses_the_state_and_matches_fresh_arrays(reference_net, mnist_like):
    ref = reference_net(31, (784, 12, 9, 3), "leaky-relu", "softmax")
    plan = plan_inference(ref.network(), mnist_like(12, 60), PIXELS, [WEIGHTS] * 3)
    state = plan.decide(plan.advance(plan.start()).state, FreezeSamples([4, 7], 1)).state
    kept = [a.copy() for a in (*state.H, *state.Z)]
    fresh = plan.advance(state).state
    assert all(np.array_equal(a, b) for a, b in zip((*state.H, *state.Z), kept, strict=True))
    reused = plan.advance(state, in_place=True).state
    assert all(a is b for a, b in zip((*reused.H, *reused.Z), (*state.H, *state.Z), strict=True))
    for a, b in zip((*fresh.H, *fresh.Z, fresh.logits), (*reused.H, *reused.Z, reused.logits),
                    strict=True):
        assert np.array_equal(a, b)


@settings(max_examples=100, deadline=None)
@given(
    z=st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=20),
    slopes=st.lists(st.floats(0, 3), min_size=1, max_size=4),
)
def test_activation_value_is_its_own_piece(z, slopes):
    # Convex (slopes sorted up), concave (sorted down) and general pieces meeting at
    # breaks -1, 0, 1, ...: value() must give each z its piece's slope * z + intercept.
    for ordered in (sorted(slopes), sorted(slopes, reverse=True), slopes):
        breaks = tuple(float(b) for b in range(-1, len(ordered) - 2))
        intercepts = [0.5]
        for b, (s0, s1) in zip(breaks, zip(ordered, ordered[1:], strict=False), strict=False):
            intercepts.append(s0 * b + intercepts[-1] - s1 * b)
        act = PiecewiseLinear("pl", breaks, tuple(ordered), tuple(intercepts))
        v = np.array(z)
        k = act.piece(v)
        expected = np.take(act.slopes, k) * v + np.take(act.intercepts, k)
        np.testing.assert_allclose(act.value(v), expected, rtol=0, atol=1e-12)


def test_a_large_input_splits_in_parallel_parts_and_names_a_bad_value(reference_net, mnist_like):
    # 1.2M values: converted by several threads where the machine has the cores.
    ref = reference_net(32, (784, 4, 1))
    X = mnist_like(13, 1500) - 0.5
    plan = plan_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2)
    assert np.array_equal(plan.input_prefix(PIXELS.m), PIXELS.truncate(X, PIXELS.m))
    X[1400, 3] = 1.0
    with pytest.raises(PartitionRangeError, match=r"input X\[1400, 3\] = 1\.0"):
        plan_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2)
    X[1400, 3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        plan_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2)


# --- Row blocks on a thread per core: same results, caller's thread settings untouched.
def _blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


@pytest.mark.parametrize("rule", [None, "gray-zone", "certified"])
def test_blocks_on_threads_give_what_one_thread_gives(reference_net, mnist_like, monkeypatch,
                                                       rule):
    ref = reference_net(33, (784, 16, 8, 1), "leaky-relu")
    X = mnist_like(14, 1100) - 0.25  # several blocks, negative inputs too
    threaded = list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 3, rule))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in a Dask worker: one thread
    inline = list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 3, rule))
    assert len(threaded) == len(inline)
    for a, b in zip(threaded, inline, strict=True):
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.frozen_at, b.frozen_at)


def test_inference_leaves_blas_threads_as_it_found_them(reference_net, mnist_like):
    before = _blas_threads()
    ref = reference_net(34, (784, 12, 1))
    results = layered_inference(ref.network(), mnist_like(15, 1100), PIXELS, [WEIGHTS] * 2)
    next(results)
    assert _blas_threads() == before  # between resolutions too
    list(results)
    assert _blas_threads() == before


def test_blocks_in_overlapping_inferences_restore_blas_threads(reference_net, mnist_like):
    from concurrent.futures import ThreadPoolExecutor

    before = _blas_threads()
    ref = reference_net(35, (784, 12, 1))
    X = mnist_like(16, 700)

    def run(_):
        return list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2))[-1].logits

    with ThreadPoolExecutor(3) as pool:
        logits = list(pool.map(run, range(6)))
    assert all(np.array_equal(logits[0], other) for other in logits[1:])
    assert _blas_threads() == before


def test_torch_kernel_blocks_leave_torch_threads_of_other_threads(reference_net, mnist_like):
    import threading

    torch = pytest.importorskip("torch")
    main = torch.get_num_threads()
    ref = reference_net(36, (784, 12, 1))
    X = mnist_like(17, 600)
    torch_logits = list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2,
                                          kernel="torch", device="cpu"))[-1].logits
    numpy_logits = list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2,
                                          kernel="numpy"))[-1].logits
    assert np.array_equal(torch_logits, numpy_logits)
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert torch.get_num_threads() == main and seen == [main]


def test_activation_value_writes_to_out():
    z = np.array([[-3.0, -0.5], [0.5, 3.0]])
    for act in (relu(), leaky_relu(0.1), pl_sigmoid()):
        out = np.full((2, 4), np.nan)[:, ::2]  # a strided view, as a block's buffer gives
        assert act.value(z, out=out) is out
        np.testing.assert_array_equal(out, act.value(z))


def _inferences(ref, X, px, pws, rule, gathered_inputs):
    """Every result of a layered inference whose first layer gathers its inputs with a
    non-zero weight where they are at most ``gathered_inputs`` of them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(network_module, "_GATHERED_INPUTS", gathered_inputs)
        return list(layered_inference(ref.network(), X, px, pws, rule))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_first_layer_reading_only_inputs_with_weights_changes_nothing(random_case, data):
    ref, X, px, pws = random_case(data)
    rule = data.draw(st.sampled_from([None, "margin", FreezeSamples(range(0, 50, 3), 1)]),
                     label="rule")
    every = _inferences(ref, X, px, pws, rule, 0.0)  # never gathers
    for gathered in (_inferences(ref, X, px, pws, rule, 1.0),  # always gathers
                     _inferences(ref, X, px, pws, rule, 0.5)):
        assert len(every) == len(gathered)
        for a, b in zip(every, gathered, strict=True):
            assert np.array_equal(a.logits, b.logits) and np.array_equal(a.frozen_at, b.frozen_at)
    for res in every:
        expected = ref.logits(X, px, pws, res.resolution)[res.frozen_at == 0]
        np.testing.assert_allclose(res.logits[res.frozen_at == 0], expected, rtol=0, atol=1e-12)


def test_paper_first_layer_reads_only_inputs_with_weights(reference_net, mnist_like):
    # Weights below 2**-2 have a zero first component, below 2**-3 zero first two: the
    # first products read one input (of zero weights), the third the inputs with weights.
    ref = reference_net(3, (784, 20, 20, 1), "relu", "sigmoid")
    W = ref.weights[0].copy()
    W[:, 100:110] *= 2  # some weights of 10 inputs reach 2**-3, none 2**-2
    ref = replace(ref, weights=(W, *ref.weights[1:]))
    X = mnist_like(2, 200)
    plan = plan_inference(ref.network(), X, PIXELS, PAPER_WEIGHTS)
    inputs = [step.inputs for step in plan.first_layer]
    assert np.array_equal(inputs[0], [0]) and plan.first_layer[0].weights.shape == (1, 20)
    with_weights = np.flatnonzero((np.abs(W) >= 2.0**-3).any(axis=0))
    assert 0 < len(with_weights) and set(with_weights) <= set(range(100, 110))
    assert np.array_equal(inputs[1], with_weights)
    assert inputs[2] is None and inputs[3] is None
    results = list(layered_inference(ref.network(), X, PIXELS, PAPER_WEIGHTS, "gray-zone"))
    for res in results:
        active = res.frozen_at == 0
        expected = ref.logits(X, PIXELS, PAPER_WEIGHTS, res.resolution)[active]
        np.testing.assert_allclose(res.logits[active], expected, rtol=0, atol=1e-12)
