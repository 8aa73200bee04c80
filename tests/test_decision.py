"""Decision rules: gray zone, margin, certified, deadline, and their composition.

Each rule's stops are checked against an independent loop over one-shot passes of the
truncated network (``reference_net`` in conftest.py).
"""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.layering import (
    AnyOf,
    Certified,
    Deadline,
    DecisionContext,
    GrayZone,
    Margin,
    Partition,
    Rule,
    layered_inference,
    resolve_rule,
)

HIDDEN = ("relu", "leaky-relu", "pl-sigmoid")
OUTPUTS = (("sigmoid", 1), ("softmax", 4))

# Two bits per component, so after 3 of 4 resolutions the remainder is small.
INPUTS = Partition((0, -2, -4, -6, -8))
WEIGHTS = Partition((1, -1, -3, -5, -7))
PIXELS = Partition((0, -1, -2, -3, -4))


def _fitted(ref, bits=(2, 2, 2, 2)):
    """One partition per layer, its range chosen from that layer's weights and bias."""
    layers = zip(ref.weights, ref.biases, strict=True)
    return [Partition.auto(np.r_[w.ravel(), b], bits=bits) for w, b in layers]


def _frozen_classes(results, output):
    last = results[-1]
    if output == "sigmoid":
        return (last.logits >= 0).astype(int)
    return np.argmax(last.logits, axis=1)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize(("output", "n_out"), OUTPUTS)
def test_certified_stops_agree_with_full_resolution(reference_net, hidden, output, n_out):
    ref = reference_net(1, (20, 10, n_out), hidden, output)
    X = np.random.default_rng(2).random((300, 20))
    pws = [WEIGHTS] * 2
    results = list(layered_inference(ref.network(), X, INPUTS, pws, rule="certified"))
    full = ref.predicted(X, INPUTS, pws, 4)
    np.testing.assert_array_equal(_frozen_classes(results, output), full)
    assert np.count_nonzero(results[-1].frozen_at < 4) > 0  # the rule did stop samples early


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_certified_bounds_enclose_full_resolution_logits(random_case, data):
    ref, X, px, pws = random_case(data, min_components=2)
    full = ref.logits(X, px, pws, px.m)
    seen = []

    class Inspect(Certified):
        def decide(self, ctx):
            seen.append((ctx.samples, ctx.logits, ctx.logit_bounds))
            return super().decide(ctx)

    results = list(layered_inference(ref.network(), X, px, pws, Inspect()))
    for samples, logits, bounds in seen:
        assert np.all(bounds.lower <= full[samples]) and np.all(full[samples] <= bounds.upper)
        assert np.all(bounds.lower <= logits) and np.all(logits <= bounds.upper)
    full_class = ref.predicted(X, px, pws, px.m)
    np.testing.assert_array_equal(_frozen_classes(results, ref.output), full_class)


def test_gray_zone_reproduces_the_paper_procedure(reference_net, mnist_like):
    ref = reference_net(4, (784, 20, 20, 1), "relu", "sigmoid")
    X = mnist_like(3, 400)
    pws = _fitted(ref)
    results = list(layered_inference(ref.network(), X, PIXELS, pws, rule="gray-zone"))

    # The paper's loop: after each resolution, samples outside [0.3, 0.6] keep that output.
    kept, decided_at = np.zeros(400), np.zeros(400, dtype=int)
    for r in range(1, 5):
        out = ref.outputs(X, PIXELS, pws, r)
        stop = (decided_at == 0) & ((out < 0.3) | (out > 0.6) | (r == 4))
        kept[stop], decided_at[stop] = out[stop], r
        if r <= len(results):
            np.testing.assert_array_equal(results[r - 1].active, decided_at == 0)
    np.testing.assert_allclose(results[-1].outputs, kept, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(results[-1].frozen_at, decided_at)
    assert 0 < np.count_nonzero(decided_at < 4)


@pytest.mark.parametrize(("output", "n_out"), OUTPUTS)
def test_margin_freezes_when_top_two_logits_differ_enough(reference_net, mnist_like, output, n_out):
    ref = reference_net(6, (784, 16, n_out), "relu", output)
    X = mnist_like(4, 300)
    pws = _fitted(ref)
    results = list(layered_inference(ref.network(), X, PIXELS, pws, Margin(0.45)))
    decided = np.zeros(300, dtype=bool)
    for res in results:
        z = ref.logits(X, PIXELS, pws, res.resolution)
        # A sigmoid is the softmax of logits (0, z): its margin is |z|.
        top2 = np.sort(np.stack([np.zeros_like(z), z], axis=1) if output == "sigmoid" else z)
        stop = ~decided & ((top2[:, -1] - top2[:, -2] > 0.45) | (res.resolution == 4))
        np.testing.assert_array_equal(res.frozen_at == res.resolution, stop)
        decided |= stop
    assert decided.all() and 0 < np.count_nonzero(results[-1].frozen_at < 4) < 300


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rate=st.floats(0, 1))
def test_active_mask_never_grows_and_frozen_outputs_stay(reference_net, seed, rate):
    rng = np.random.default_rng(seed)

    class Random(Rule):
        def decide(self, ctx):
            return rng.random(ctx.n_active) < rate

    ref = reference_net(seed, (16, 8, 3), "pl-sigmoid", "softmax")
    X = rng.random((50, 16))
    results = list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2, Random()))
    previous = np.ones(50, dtype=bool)
    for before, res in zip([None, *results], results, strict=False):
        assert not np.any(res.active & ~previous)
        newly = previous & ~res.active
        np.testing.assert_array_equal(res.frozen_at == res.resolution, newly)
        if before is not None:
            np.testing.assert_array_equal(res.outputs[~previous], before.outputs[~previous])
        previous = res.active
    assert not results[-1].active.any() and np.all(results[-1].frozen_at > 0)
    assert results[-1].stop_reason in ("completed", "decided")


def test_rules_compose_as_any_of():
    ctx = DecisionContext(
        resolution=1,
        resolutions=4,
        output="sigmoid",
        outputs=np.array([0.1, 0.45, 0.58, 0.9]),
        logits=np.array([-2.2, -0.2, 0.32, 2.2]),
    )
    both = GrayZone() | Margin(0.3)
    assert isinstance(both, AnyOf) and len((both | Margin(1.0)).rules) == 3
    np.testing.assert_array_equal(both.decide(ctx), [True, False, True, True])
    np.testing.assert_array_equal(AnyOf([]).decide(ctx), [False] * 4)
    assert (Deadline(at=0.0) | GrayZone()).halts(ctx) == "deadline"
    assert (Deadline(3600) | GrayZone()).halts(ctx) is None


def test_last_resolution_freezes_everybody(reference_net):
    class Never(Rule):
        def decide(self, ctx):
            return np.zeros(ctx.n_active, dtype=bool)

    ref = reference_net(2, (5, 3, 1))
    X = np.full((7, 5), 0.5)
    results = list(layered_inference(ref.network(), X, PIXELS, [WEIGHTS] * 2, Never()))
    assert [r.active.sum() for r in results] == [7, 7, 7, 0]
    assert results[-1].stop_reason == "completed"


def test_deadline_accepts_seconds_or_an_absolute_time():
    ctx = DecisionContext(
        resolution=1, resolutions=2, output="sigmoid", outputs=np.ones(1), logits=np.ones(1)
    )
    assert Deadline(0).halts(ctx) == "deadline"
    assert Deadline(at=datetime.now(UTC) - timedelta(seconds=1)).halts(ctx) == "deadline"
    assert Deadline(at=datetime.now(UTC) + timedelta(hours=1)).halts(ctx) is None
    assert not Deadline(0).decide(ctx).any()


def test_bad_rules_raise_clear_errors(reference_net):
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
        GrayZone(0.7, 0.3)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        Margin(-0.1)
    with pytest.raises(ValueError, match="exactly one of seconds or at"):
        Deadline()
    with pytest.raises(ValueError, match="exactly one of seconds or at"):
        Deadline(5, at=0.0)
    with pytest.raises(TypeError, match="rule must be None, a name"):
        resolve_rule(42)
    with pytest.raises(TypeError, match="AnyOf takes Rule objects"):
        AnyOf(["gray-zone"])
    assert resolve_rule("margin") == Margin(0.05) and resolve_rule("certified") == Certified()

    softmax = reference_net(0, (4, 3), "relu", "softmax").network()
    X = np.full((2, 4), 0.5)
    with pytest.raises(ValueError, match="gray-zone rule needs a sigmoid output"):
        layered_inference(softmax, X, PIXELS, [WEIGHTS], rule="gray-zone")

    class Sloppy(Rule):
        def decide(self, ctx):
            return np.zeros(ctx.n_active + 1)

    with pytest.raises(ValueError, match=r"expected a bool mask of shape \(2,\)"):
        list(layered_inference(softmax, X, PIXELS, [WEIGHTS], Sloppy()))
