"""Per-row and per-column partitions: bounds against the exact product, edge cases."""

from fractions import Fraction

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
    resolution_block,
)

ORDERINGS = ["anti-diagonal", "one-per-resolution", "shells"]
TINY = 2.0**-1074


def exact_product(W, X):
    """``W @ X`` in exact rational arithmetic (every float64 is a fraction)."""
    W = [[Fraction(float(v)) for v in row] for row in np.asarray(W)]
    X = [[Fraction(float(v)) for v in row] for row in np.asarray(X)]
    k = len(X)
    return [[sum((W[i][t] * X[t][j] for t in range(k)), Fraction(0)) for j in range(len(X[0]))]
            for i in range(len(W))]


def assert_within(estimate, exact, bound):
    """``|exact - estimate| <= bound`` entry by entry, checked in exact arithmetic."""
    bound = np.broadcast_to(bound, estimate.shape)
    for i, row in enumerate(exact):
        for j, value in enumerate(row):
            error = abs(Fraction(float(estimate[i, j])) - value)
            assert error <= Fraction(float(bound[i, j])), (i, j, float(error), bound[i, j])


def scaled_operands(rng, m, k, n, decades=6.0):
    """Gaussian W and X with row (W) and column (X) scales spanning 10^-decades..10^decades."""
    W = rng.normal(size=(m, k)) * 10.0 ** rng.uniform(-decades, decades, (m, 1))
    X = rng.normal(size=(k, n)) * 10.0 ** rng.uniform(-decades, decades, (1, n))
    return W, X


@st.composite
def problems(draw):
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 24)), draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=8).filter(
        lambda ws: sum(ws) <= 62))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    W, X = scaled_operands(rng, m, k, n)
    if draw(st.booleans()):  # a zero row, a zero column and some zero entries
        W[rng.integers(m)] = 0.0
        X[:, rng.integers(n)] = 0.0
        W[rng.random((m, k)) < 0.2] = 0.0
    return W, X, tuple(widths)


@pytest.mark.parametrize("ordering", ORDERINGS)
@pytest.mark.parametrize("kind", ["data", "static"])
@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_bound_and_truncation_bound_cover_the_exact_product_at_every_resolution(
    ordering, kind, problem
):
    W, X, bits = problem
    pw, px = Partition.auto(W, bits, axis=1), Partition.auto(X, bits, axis=0)
    true = exact_product(W, X)
    truncated = exact_product(pw.truncate(W), px.truncate(X))
    previous = np.inf
    for res in layered_matmul(W, X, pw, px, ordering=ordering, bound=kind):
        bound = np.broadcast_to(res.bound, res.estimate.shape)
        assert_within(res.estimate, truncated, bound)
        assert_within(res.estimate, true, bound + res.truncation_bound)
        assert np.all(bound <= previous)
        previous = bound
    if res.exact:
        assert_within(res.estimate, truncated, np.zeros_like(res.estimate))


def test_eight_slices_of_seven_bits_are_as_accurate_as_float64():
    rng = np.random.default_rng(11)
    W, X = scaled_operands(rng, 6, 200, 5)
    pw, px = Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8, axis=0)
    results = list(layered_matmul(W, X, pw, px))
    true = exact_product(W, X)
    scale = np.abs(W) @ np.abs(X)

    def max_error(estimate):  # relative to |W| @ |X|, in exact arithmetic
        return max(abs(Fraction(float(estimate[i, j])) - value) / Fraction(float(scale[i, j]))
                   for i, row in enumerate(true) for j, value in enumerate(row))

    assert max_error(results[-1].estimate) <= 2 * max_error(W @ X)
    assert not results[-1].exact  # 112 bits of span: the float64 sums round, and are bounded
    assert_within(results[-1].estimate, exact_product(W, X),
                  results[-1].bound + results[-1].truncation_bound)


def test_small_rows_keep_their_accuracy_at_early_resolutions():
    rng = np.random.default_rng(12)
    W, X = scaled_operands(rng, 8, 64, 16)
    W[0] *= 1e6 / np.abs(W[0]).max()  # the largest row sets a global p_0
    W[1] *= 1e-6 / np.abs(W[1]).max()
    true = np.array(exact_product(W, X), dtype=np.float64)
    scale = np.abs(W) @ np.abs(X)

    def second(pw, px):
        return list(layered_matmul(W, X, pw, px))[1]

    scaled = second(Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8, axis=0))
    global_ = second(Partition.auto(W, (7,) * 8), Partition.auto(X, (7,) * 8))
    assert np.all(global_.estimate[1] == 0)  # the 1e-6 row is still all zero
    assert np.max(np.abs(global_.estimate - true) / scale) > 1e-2
    # every entry already carries about 14 bits relative to its own row and column
    assert np.max(np.abs(scaled.estimate - true) / scale) < 1e-3
    assert np.all(scaled.bound <= 1e-2 * scale)


def test_global_partitions_with_inexact_sums_now_bound_the_rounding():
    rng = np.random.default_rng(13)
    W, X = rng.normal(size=(4, 50)), rng.normal(size=(50, 3))
    pw, px = Partition.auto(W, (7,) * 8), Partition.auto(X, (7,) * 8)
    true, truncated = exact_product(W, X), exact_product(pw.truncate(W), px.truncate(X))
    for res in layered_matmul(W, X, pw, px):
        assert_within(res.estimate, truncated, res.bound)
        assert_within(res.estimate, true, res.bound + res.truncation_bound)


def test_zero_rows_and_columns_give_exact_zeros():
    rng = np.random.default_rng(14)
    W, X = scaled_operands(rng, 4, 10, 3)
    W[2] = 0.0
    X[:, 1] = 0.0
    pw, px = Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8, axis=0)
    assert pw.offsets[2] == 0 and px.offsets[1] == 0
    for res in layered_matmul(W, X, pw, px):
        assert np.all(res.estimate[2] == 0) and np.all(res.estimate[:, 1] == 0)
        assert np.all(np.broadcast_to(res.bound, res.estimate.shape)[2] < 1e-300)


@pytest.mark.parametrize("x_scale", [1e300, 1.0, 1e-10])
def test_subnormal_rows_are_split_exactly_and_bounded(x_scale):
    rng = np.random.default_rng(15)
    W = rng.normal(size=(3, 12))
    W[1] *= 1e-310  # subnormal
    W[2] = np.ldexp(rng.integers(-5, 6, 12).astype(float), -1074)  # a few ulps of zero
    X = rng.normal(size=(12, 2)) * x_scale
    pw, px = Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8, axis=0)
    # scaled up onto the shared grid, a subnormal row keeps every bit
    np.testing.assert_array_equal(pw.truncate(W)[1:], W[1:])
    np.testing.assert_array_equal(pw.reconstruct(pw.split(W))[1:], W[1:])
    true = exact_product(W, X)
    for res in layered_matmul(W, X, pw, px):
        assert_within(res.estimate, true, res.bound + res.truncation_bound)
    if x_scale == 1e300:  # the product of subnormals and huge values is normal, and accurate
        rel = np.abs(res.estimate[1] - np.array(true[1], dtype=float)) / (np.abs(W[1]) @ np.abs(X))
        assert np.all(rel < 1e-15)


def test_a_product_beyond_float64_is_a_named_error():
    W = np.full((2, 4), 1e300)
    X = np.full((4, 2), 1e300)
    pw, px = Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8, axis=0)
    with pytest.raises(OverflowError, match="exceeds the float64 range"):
        list(layered_matmul(W, X, pw, px))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_stay_named_errors(bad):
    W = np.ones((3, 4))
    W[1, 2] = bad
    with pytest.raises(ValueError, match=r"a\[1, 2\] = .* is not finite"):
        Partition.auto(W, (7,) * 8, axis=1)
    pw = Partition((0, -7, -14), offsets=[1, 1, 1], axis=1)
    with pytest.raises(ValueError, match=r"W\[1, 2\] = .* is not finite"):
        list(layered_matmul(W, np.ones((4, 2)), pw, Partition((1, -6))))


def test_offsets_are_normalised_and_validated():
    p = Partition((4, 0, -3), offsets=np.array([0, -10]), axis=1)
    assert p.points == (0, -4, -7) and p.offsets == (4, -6) and p.scaled
    assert p == Partition((0, -4, -7), offsets=(4, -6), axis=1)
    assert not Partition((4, 0)).scaled and Partition((4, 0)).offsets is None
    with pytest.raises(ValueError, match="offsets and axis go together"):
        Partition((4, 0), offsets=[1, 2])
    with pytest.raises(ValueError, match="axis must be"):
        Partition((4, 0), offsets=[1, 2], axis=2)
    with pytest.raises(ValueError, match="integers"):
        Partition((4, 0), offsets=[1.5], axis=1)
    with pytest.raises(ValueError, match="within"):
        Partition((4, 0), offsets=[5000], axis=1)
    with pytest.raises(ValueError, match="2-D"):
        Partition.auto([1.0, 2.0], axis=1)
    with pytest.raises(ValueError, match="axis must be"):
        Partition.auto(np.ones((2, 2)), axis=2)


def test_a_row_out_of_its_range_names_the_row_and_its_offset():
    p = Partition((0, -4), offsets=[0, -3], axis=1)
    with pytest.raises(PartitionRangeError, match=r"a\[1, 0\] = 0.5 .* row 1's offset -3"):
        p.components(np.array([[0.5, 0.25], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="one offset per row for 2 rows"):
        p.components(np.ones((3, 2)) * 0.1)
    clipped, n = p.clip(np.array([[0.5, 0.25], [0.5, 0.0]]))
    assert n == 1 and clipped[1, 0] == 2.0**-3 - 2.0**-7


def test_w_per_column_or_x_per_row_is_refused():
    W, X = np.ones((3, 4)), np.ones((4, 2))
    with pytest.raises(ValueError, match="W's partition is per column"):
        list(layered_matmul(W, X, Partition.auto(W, axis=0), Partition.auto(X)))
    with pytest.raises(ValueError, match="X's partition is per row"):
        list(layered_matmul(W, X, Partition.auto(W), Partition.auto(X, axis=1)))


def test_per_row_w_with_global_x_and_pre_split_operands():
    rng = np.random.default_rng(16)
    W, X = scaled_operands(rng, 5, 20, 3)
    pw, px = Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8)
    direct = list(layered_matmul(W, X, pw, px))
    w = SplitOperand.from_components(pw.components(W), pw, name="W")
    split = list(layered_matmul(w, X, pw, px))
    truncated = exact_product(pw.truncate(W), X)
    for a, b in zip(direct, split, strict=True):
        np.testing.assert_array_equal(a.estimate, b.estimate)
        assert_within(b.estimate, truncated, b.bound + b.truncation_bound)
    with pytest.raises(ValueError, match="do not match partition"):
        other = Partition(pw.points, [o + 1 for o in pw.offsets], axis=1)
        SplitOperand.from_components(pw.components(W), other, name="W")


def test_row_blocks_match_the_whole_product_bit_for_bit():
    rng = np.random.default_rng(17)
    W, X = scaled_operands(rng, 7, 30, 4)
    pw, px = Partition.auto(W, (7,) * 8, axis=1), Partition.auto(X, (7,) * 8, axis=0)
    whole = list(layered_matmul(W, X, pw, px, reuse="none"))
    order = Ordering.anti_diagonal(pw.m, px.m)
    x = SplitOperand(X, px, name="X")
    assert px.rows(0, 3) is px  # a block of rows has every column
    for start, stop in [(0, 3), (3, 7)]:
        w = SplitOperand(W[start:stop], pw.rows(start, stop), name="W")
        previous, kept = None, None
        for res in whole:
            block, kept = resolution_block(w, x, order, res.resolution, previous, kept=kept)
            np.testing.assert_array_equal(block.estimate, res.estimate[start:stop])
            whole_bound = np.broadcast_to(res.bound, res.estimate.shape)
            np.testing.assert_array_equal(
                np.broadcast_to(block.bound, block.estimate.shape), whole_bound[start:stop])
            previous = block.estimate


def test_per_row_split_reports_the_largest_value_as_given_and_whether_it_dropped_bits():
    rng = np.random.default_rng(18)
    W, _ = scaled_operands(rng, 300, 700, 1)  # several split blocks, rows across blocks
    for axis in (1, 0):
        p = Partition.auto(W, (7,) * 8, axis=axis)
        comps = p.components(W)
        assert comps.abs_max == np.max(np.abs(W))
        assert comps.off_grid
        assert np.array_equal(sum(comps.value(i) for i in range(p.m)), p.truncate(W))
        on_grid = p.truncate(W)
        assert not p.components(on_grid).off_grid


@pytest.mark.parametrize("reuse", ["none", "karatsuba", "panel"])
def test_wide_digits_with_int64_products_stay_within_the_bound(reuse):
    # 20-bit digits and K = 8200: products pass 2**53 and are int64, whose conversion
    # (and Karatsuba's sums) the rounding term must cover
    rng = np.random.default_rng(19)
    k = 8200
    W = rng.integers(-(2**39), 2**39, (2, k)).astype(np.float64)
    X = rng.integers(-(2**39), 2**39, (k, 9)).astype(np.float64)
    pw, px = Partition.auto(W, (20, 20)), Partition.auto(X, (20, 20))
    exact = np.asarray(W, dtype=np.int64).astype(object) @ np.asarray(X, dtype=np.int64).astype(
        object)
    results = list(layered_matmul(W, X, pw, px, reuse=reuse, kernel="numpy"))
    assert all("int64" in r.dtypes for r in results[:2])
    for res in results:
        bound = np.broadcast_to(res.bound, res.estimate.shape)
        for (i, j), value in np.ndenumerate(exact):
            error = abs(Fraction(float(res.estimate[i, j])) - value)
            assert error <= Fraction(float(bound[i, j])), (res.resolution, i, j)
    assert results[-1].truncation_bound == 0
