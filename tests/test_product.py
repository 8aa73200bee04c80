"""Layered products: exact final resolution, guaranteed and non-increasing bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.layering import (
    Ordering,
    Partition,
    PartitionRangeError,
    SplitOperand,
    layered_matmul,
)

ORDERINGS = ["anti-diagonal", "one-per-resolution", "shells"]


def exact_truncated_product(W, X, pw, px):
    """Independent reference: integer arithmetic on the operands' finest grids.

    Truncation toward zero to the grid 2**p_m is done here with Python's own integer
    conversion, not with the library, and the product in exact int64.
    """
    wq = np.trunc(np.asarray(W, dtype=np.float64) / 2.0 ** pw.points[-1]).astype(np.int64)
    xq = np.trunc(np.asarray(X, dtype=np.float64) / 2.0 ** px.points[-1]).astype(np.int64)
    prod = wq @ xq
    return prod.astype(np.float64) * 2.0 ** (pw.points[-1] + px.points[-1])


@st.composite
def problems(draw):
    m = draw(st.integers(1, 9))
    k = draw(st.integers(1, 40))
    n = draw(st.integers(1, 7))

    def partition():
        p0 = draw(st.integers(-3, 9))
        widths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
        pts = [p0]
        for w in widths:
            pts.append(pts[-1] - w)
        return Partition(pts)

    pw, px = partition(), partition()
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    W = rng.uniform(-1, 1, (m, k)) * pw.limit * 0.999
    X = rng.uniform(-1, 1, (k, n)) * px.limit * 0.999
    return W, X, pw, px


@pytest.mark.parametrize("ordering", ORDERINGS)
@settings(max_examples=40, deadline=None)
@given(problem=problems())
def test_final_resolution_is_the_truncated_product_bit_for_bit(ordering, problem):
    W, X, pw, px = problem
    results = list(layered_matmul(W, X, pw, px, ordering=ordering))
    ref = exact_truncated_product(W, X, pw, px)
    assert results[-1].exact
    assert results[-1].final and results[-1].resolution == len(results)
    np.testing.assert_array_equal(results[-1].estimate, ref)
    # and it equals numpy's one-shot float64 product of the truncated operands
    np.testing.assert_array_equal(results[-1].estimate, pw.truncate(W) @ px.truncate(X))


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("kind", ["data", "static"])
@settings(max_examples=30, deadline=None)
@given(problem=problems())
def test_bound_holds_at_every_resolution_and_never_increases(ordering, kind, problem):
    W, X, pw, px = problem
    ref = exact_truncated_product(W, X, pw, px)
    previous = np.inf
    for res in layered_matmul(W, X, pw, px, ordering=ordering, bound=kind):
        bound = np.broadcast_to(res.bound, res.estimate.shape)
        assert np.all(np.abs(ref - res.estimate) <= bound)
        assert np.all(bound <= previous)
        assert np.all(bound <= res.static_bound * (1 + 1e-12))
        previous = bound
    assert np.all(previous == 0)


def test_the_bound_does_not_grow_by_rounding_when_the_pairs_dropped_were_zero():
    # W's first component is zero in row 0: dropping its pairs changes the bound's exact
    # value by nothing, and its float64 sum (over fewer terms, another order) must not
    # come out larger (found by hypothesis)
    W, X = np.array([[0.27364945], [-0.45996615]]), np.array([[-0.9171349]])
    pw, px = Partition((0, -1, -2, -3)), Partition((0, -1, -2, -5))
    previous = np.inf
    for res in layered_matmul(W, X, pw, px, ordering="one-per-resolution"):
        assert np.all(res.bound <= previous)
        previous = res.bound


def test_intermediate_estimates_are_partial_sums_of_component_products():
    rng = np.random.default_rng(3)
    W = rng.integers(-255, 256, (6, 9)).astype(float)
    X = rng.integers(-255, 256, (9, 4)).astype(float)
    p = Partition((8, 4, 0))
    w_parts, x_parts = p.split(W), p.split(X)
    order = Ordering.one_per_resolution(p, p)
    expected = np.zeros((6, 4))
    for res, group in zip(layered_matmul(W, X, p, p, ordering=order), order.groups, strict=True):
        for i, j in group:
            expected = expected + w_parts[i] @ x_parts[j]
        np.testing.assert_array_equal(res.estimate, expected)
        assert res.pairs == group


def test_integer_operands_have_no_truncation_term_and_exact_final():
    rng = np.random.default_rng(0)
    W = rng.integers(-128, 128, (64, 300)).astype(float)
    X = rng.integers(-128, 128, (300, 3)).astype(float)
    p = Partition.auto(np.concatenate([W.ravel(), X.ravel()]), bits=(4, 4))
    results = list(layered_matmul(W, X, p, p))
    assert results[0].truncation_bound == 0.0
    np.testing.assert_array_equal(results[-1].estimate, W @ X)


def test_truncation_bound_covers_the_untruncated_product():
    rng = np.random.default_rng(5)
    W = rng.normal(size=(20, 50))
    X = rng.normal(size=(50, 6))
    pw, px = Partition.auto(W, bits=(3, 3)), Partition.auto(X, bits=(3, 3))
    final = list(layered_matmul(W, X, pw, px))[-1]
    assert final.truncation_bound > 0
    assert np.all(np.abs(W @ X - final.estimate) <= final.truncation_bound * (1 + 1e-9))


def test_small_components_use_float32_and_costs_add_up_to_one_shot():
    rng = np.random.default_rng(1)
    W = rng.integers(-255, 256, (32, 128)).astype(float)
    X = rng.integers(-255, 256, (128, 16)).astype(float)
    p = Partition((8, 4, 0))
    gemm = 2 * 32 * 128 * 16
    results = list(layered_matmul(W, X, p, p, ordering="anti-diagonal", reuse="none",
                                  kernel="numpy"))
    assert all(d == "float32" for r in results for d in r.dtypes)
    assert sum(r.bit_ops for r in results) == 32 * 128 * 16 * 8 * 8
    assert results[0].bit_ops == 32 * 128 * 16 * 4 * 4
    assert [r.flops for r in results] == [gemm, 2 * gemm, gemm]
    # Karatsuba: the middle resolution's two products from one GEMM plus W_1 X_1, which
    # the last resolution then reuses
    karatsuba = list(layered_matmul(W, X, p, p, ordering="anti-diagonal", reuse="karatsuba"))
    assert [r.flops for r in karatsuba] == [gemm, 2 * gemm, 0]
    assert [r.bit_ops for r in karatsuba] == [r.bit_ops for r in results]


@pytest.mark.parametrize("ordering", ORDERINGS)
@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_every_reuse_strategy_gives_identical_estimates(ordering, problem):
    W, X, pw, px = problem
    runs = {
        reuse: [r.estimate for r in layered_matmul(W, X, pw, px, ordering=ordering, reuse=reuse)]
        for reuse in ("none", "karatsuba", "panel", "auto")
    }
    for estimates in runs.values():
        for a, b in zip(runs["none"], estimates, strict=True):
            np.testing.assert_array_equal(a, b)


def test_symmetric_partitions_use_karatsuba_for_every_mirrored_pair():
    rng = np.random.default_rng(8)
    W = rng.integers(-511, 512, (20, 30)).astype(float)
    X = rng.integers(-511, 512, (30, 12)).astype(float)
    p = Partition((9, 6, 3, 0))
    none = list(layered_matmul(W, X, p, p, reuse="none"))
    fast = list(layered_matmul(W, X, p, p, reuse="karatsuba"))
    assert sum(r.flops for r in fast) < sum(r.flops for r in none)
    np.testing.assert_array_equal(fast[-1].estimate, W @ X)


def test_panel_reads_each_w_component_once_for_a_vector():
    rng = np.random.default_rng(9)
    W = rng.integers(-255, 256, (40, 50)).astype(float)
    x = rng.integers(-255, 256, 50).astype(float)
    p = Partition((8, 4, 0))
    results = list(layered_matmul(W, x, p, p, reuse="panel"))
    # resolution 1 computes only W_0 x_0; resolution 2 reads W_1 once for W_1 x_0 and the
    # last resolution's W_1 x_1, and W_0 once more for W_0 x_1
    assert [r.flops for r in results] == [2 * 40 * 50, 2 * 40 * 50 * 3, 0]
    np.testing.assert_array_equal(results[-1].estimate[:, 0], W @ x)
    with pytest.raises(ValueError, match="unknown reuse strategy"):
        list(layered_matmul(W, x, p, p, reuse="always"))


def test_wide_components_fall_back_to_exact_wider_arithmetic():
    rng = np.random.default_rng(2)
    W = rng.integers(-(2**20), 2**20, (5, 70)).astype(float)
    X = rng.integers(-(2**20), 2**20, (70, 3)).astype(float)
    p = Partition((21, 0))
    (res,) = layered_matmul(W, X, p, p)
    # 70 * (2**21 - 1)**2 < 2**53: beyond float32, exact in float64
    assert res.dtypes == ("float64",) and res.exact
    np.testing.assert_array_equal(res.estimate, exact_truncated_product(W, X, p, p))
    (res,) = layered_matmul(W * 32, X * 32, Partition((26, 0)), Partition((26, 0)))
    # 70 * (2**26 - 1)**2 > 2**53: the product is done in int64
    assert res.dtypes == ("int64",)


def test_accumulation_beyond_float64_is_reported_as_not_exact():
    W = np.ones((2, 3)) * (2.0**40 - 1)
    p = Partition((40, 20, 0))
    results = list(layered_matmul(W, W.T, p, p))
    assert not results[-1].exact


def test_vector_x_and_pre_split_operands():
    rng = np.random.default_rng(4)
    W = rng.integers(-7, 8, (10, 12)).astype(float)
    x = rng.integers(-7, 8, 12).astype(float)
    p = Partition((3, 1, 0))
    direct = list(layered_matmul(W, x, p, p))
    w_split = SplitOperand(W, p, name="W")
    pre = list(layered_matmul(w_split, x, p, p))
    assert direct[-1].estimate.shape == (10, 1)
    for a, b in zip(direct, pre, strict=True):
        np.testing.assert_array_equal(a.estimate, b.estimate)
    np.testing.assert_array_equal(direct[-1].estimate[:, 0], W @ x)


def test_clip_reports_nothing_lost_silently():
    W = np.array([[20.0, 1.0]])
    X = np.array([[1.0], [1.0]])
    p = Partition((4, 0))
    with pytest.raises(PartitionRangeError, match=r"W\[0, 0\] = 20.0"):
        list(layered_matmul(W, X, p, p))
    w = SplitOperand(W, p, clip=True, name="W")
    assert w.clipped == 1
    assert list(layered_matmul(w, X, p, p))[-1].estimate[0, 0] == 15.0 + 1.0


@pytest.mark.parametrize(
    "W, X, message",
    [
        (np.ones((3, 4)), np.ones((5, 2)), r"shape mismatch: W is \(3, 4\) and X is \(5, 2\)"),
        (np.ones((3, 4, 1)), np.ones((4, 2)), "W must be a 2-D array"),
        (np.ones((0, 4)), np.ones((4, 2)), "W is empty"),
        (np.array([[1.0, np.nan]]), np.ones((2, 1)), r"W\[0, 1\] = nan is not finite"),
        (np.ones((1, 2)), np.array([[1.0], [np.inf]]), r"X\[1, 0\] = inf is not finite"),
    ],
)
def test_bad_operands_raise_clear_errors(W, X, message):
    p = Partition((4, 0))
    with pytest.raises(ValueError, match=message):
        list(layered_matmul(W, X, p, p))


def test_unknown_bound_kind_and_mismatched_split():
    p = Partition((4, 0))
    with pytest.raises(ValueError, match="unknown bound kind"):
        list(layered_matmul(np.ones((1, 1)), np.ones((1, 1)), p, p, bound="tight"))
    w = SplitOperand(np.ones((1, 1)), Partition((3, 0)), name="W")
    with pytest.raises(ValueError, match=r"split under \(3, 0\)"):
        list(layered_matmul(w, np.ones((1, 1)), p, p))


def test_left_operand_row_statistics_from_the_split_equal_those_read_from_its_digits():
    from layered.layering.product import _abs_stats

    p = Partition((8, 4, 0, -2))
    W = np.random.default_rng(11).uniform(-255, 255, (300, 700))
    w = SplitOperand(W, p, name="W")
    for i in range(p.m):
        scale = 2.0 ** p.exponents[i]
        want = _abs_stats(w.components.digits[i], 1, scale)
        for got, expected in zip(w.abs_stats(i, axis=1), want, strict=True):
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("reuse", ["none", "karatsuba", "auto"])
def test_a_prepared_block_converts_nothing_more_and_gives_the_same_results(reuse):
    from layered.layering import Ordering, prepare_block, resolution_block

    rng = np.random.default_rng(11)
    p = Partition((8, 4, 0))
    W = rng.integers(-255, 256, (30, 40)).astype(float)
    X = rng.integers(-255, 256, (40, 20)).astype(float)
    order = Ordering.anti_diagonal(2, 2)
    w, x = SplitOperand(W, p, name="W"), SplitOperand(X, p, name="X")
    prepare_block(w, x, order, kernel="numpy", reuse=reuse)
    def conversions(a):  # (the bounds' statistics are not conversions)
        return {key for key in a._prepared if key[0] != "stats"}

    converted = conversions(w), conversions(x)
    previous, kept = None, None
    for r, direct in enumerate(layered_matmul(W, X, p, p, ordering=order, kernel="numpy"), 1):
        res, kept = resolution_block(w, x, order, r, previous, kept=kept, reuse=reuse,
                                     kernel="numpy")
        np.testing.assert_array_equal(res.estimate, direct.estimate)
        previous = res.estimate
    assert (conversions(w), conversions(x)) == converted
