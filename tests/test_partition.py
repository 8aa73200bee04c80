"""Partitions: splitting, truncation, range checks, automatic choice."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.layering import Partition, PartitionRangeError, partition


def test_worked_example_from_the_method():
    p = Partition((4, 0, -3))
    assert [float(c) for c in p.split(-13.625)] == [-13.0, -0.625]
    comps = p.components(-13.625)
    assert [int(d) for d in comps.digits] == [-13, -5]
    assert comps.exponents == (0, -3)


def test_one_bit_components_of_a_fraction():
    p = Partition((0, -1, -2, -3, -4))
    assert [float(c) for c in p.split(0.7)] == [0.5, 0.0, 0.125, 0.0625]
    assert float(p.truncate(0.7)) == 0.6875


def test_pixel_bits_most_significant_first():
    pixels = np.array([0, 1, 128, 200, 255], dtype=np.uint8) / 256
    parts = Partition((0, -1, -2, -3, -4, -5, -6, -7, -8)).split(pixels)
    bits = np.array([np.rint(part * 2 ** (k + 1)).astype(int) for k, part in enumerate(parts)])
    expected = np.array([[(v >> (7 - k)) & 1 for v in (0, 1, 128, 200, 255)] for k in range(8)])
    np.testing.assert_array_equal(bits, expected)


@st.composite
def partitions(draw, max_components=5):
    p0 = draw(st.integers(-6, 10))
    widths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=max_components))
    points = [p0]
    for w in widths:
        points.append(points[-1] - w)
    return Partition(points)


@settings(max_examples=60, deadline=None)
@given(p=partitions(), seed=st.integers(0, 2**32 - 1))
def test_components_sum_to_the_truncated_value(p, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, size=(7, 5)) * (p.limit * (1 - 2**-40))
    parts = p.split(a)
    total = p.reconstruct(parts)
    np.testing.assert_array_equal(total, p.truncate(a))
    # truncation is toward zero and drops less than one finest grid step
    assert np.all(np.abs(total) <= np.abs(a))
    assert np.all(np.abs(a - total) < p.resolution)
    # each component sits on its grid, within its magnitude bound, with the sign of a
    for i, part in enumerate(parts):
        assert np.all(np.abs(part) <= p.component_bound(i))
        steps = part / 2.0 ** p.exponents[i]
        np.testing.assert_array_equal(steps, np.round(steps))
        assert np.all((part == 0) | (np.sign(part) == np.sign(a)))


@settings(max_examples=40, deadline=None)
@given(p=partitions(), seed=st.integers(0, 2**32 - 1))
def test_truncating_to_r_components_is_the_sum_of_the_first_r(p, seed):
    a = np.random.default_rng(seed).uniform(-1, 1, size=20) * p.limit * 0.999
    parts = p.split(a)
    for r in range(p.m + 1):
        np.testing.assert_array_equal(p.truncate(a, r), sum(parts[:r], np.zeros_like(a)))
        assert np.all(np.abs(p.truncate(a) - p.truncate(a, r)) <= p.tail_bound(r))


def test_digits_are_small_integers():
    comps = Partition((8, 4, 0)).components(np.arange(-255, 256))
    assert all(d.dtype == np.int8 for d in comps.digits)
    assert max(int(np.abs(d).max()) for d in comps.digits) == 15


@pytest.mark.parametrize(
    "points, message",
    [
        ((4, 4, 0), "strictly decreasing"),
        ((0, 1), "strictly decreasing"),
        ((3,), "at least two points"),
        ((4.0, 0), "must be integers"),
        ((70, 0), "spans 70 bits"),
    ],
)
def test_bad_partition_vectors_are_refused(points, message):
    with pytest.raises(ValueError, match=message):
        Partition(points)


def test_out_of_range_value_names_the_value_and_p0():
    p = Partition((4, 0, -3))
    with pytest.raises(PartitionRangeError, match=r"a\[2\] = -16.0 .*2\^4 = 16"):
        p.split(np.array([1.0, 15.9, -16.0]))


def test_clip_is_counted_instead_of_raising():
    p = Partition((4, 0, -3))
    comps = p.components(np.array([1.0, 40.0, -17.0, 3.5]), clip=True)
    assert comps.clipped == 2
    values = sum(comps.value(i) for i in range(p.m))
    np.testing.assert_array_equal(values, [1.0, 15.875, -15.875, 3.5])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_an_error(bad):
    with pytest.raises(ValueError, match=r"a\[1\] = .* is not finite"):
        Partition((4, 0)).split(np.array([1.0, bad]))


def test_non_numeric_input_is_an_error():
    with pytest.raises(TypeError, match="numeric"):
        Partition((4, 0)).split(np.array(["a", "b"]))


def test_auto_takes_the_range_from_the_data():
    assert Partition.auto([200, -3, 17], bits=(4, 4)).points == (8, 4, 0)
    # a power of two needs the next bit: |a| < 2**p_0 is strict
    assert Partition.auto([-128, 5], bits=(4, 4)).points == (8, 4, 0)
    assert Partition.auto([127], bits=(4, 4)).points == (7, 3, -1)
    assert Partition.auto([0.99], bits=(1, 2, 3)).points == (0, -1, -3, -6)
    a = np.random.default_rng(1).normal(size=100)
    p = Partition.auto(a, bits=(3, 3))
    assert np.max(np.abs(a)) < p.limit <= 2 * np.max(np.abs(a))
    p.check(a)


def test_auto_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        Partition.auto([1.0], bits=(4, 0))


def test_component_and_tail_bounds():
    p = Partition((4, 0, -3))
    assert p.component_bound(0) == 15.0
    assert p.component_bound(1) == 0.875
    assert p.tail_bound(0) == 16 - 0.125
    assert p.tail_bound(1) == 1 - 0.125
    assert p.tail_bound(2) == 0.0
    assert math.isclose(p.limit, 16.0) and p.resolution == 0.125


def reference_digits(p, a):
    """Digits from truncation alone: component i is truncate(a, i + 1) - truncate(a, i)."""
    return [(p.truncate(a, i + 1) - p.truncate(a, i)) / 2.0 ** p.exponents[i] for i in range(p.m)]


@settings(max_examples=40, deadline=None)
@given(p=partitions(), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(["float64", "float32", "int16", "int64"]),
       on_grid=st.booleans())
def test_split_reports_max_and_whether_anything_was_dropped(p, seed, dtype, on_grid):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, size=(6, 9)) * p.limit * 0.999
    if on_grid or np.dtype(dtype).kind == "i":
        a = p.truncate(a)
    a = a.astype(dtype)
    if np.dtype(dtype).kind == "i":
        a = a[np.abs(a) < p.limit] if np.any(np.abs(a) >= p.limit) else a
    comps = p.components(a)
    as_float = np.asarray(a, dtype=np.float64)
    assert comps.abs_max == float(np.max(np.abs(as_float)))
    assert comps.off_grid == bool(np.any(p.truncate(as_float) != as_float))
    for got, want in zip(comps.digits, reference_digits(p, as_float), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("compiled", [False, True])
def test_split_of_a_large_array_matches_truncation_and_names_a_late_bad_value(
        compiled, monkeypatch):
    # many blocks, split on several threads; or the one compiled pass (layering.fused)
    monkeypatch.setattr(partition, "_BLOCK", 1 << 14)
    if compiled:
        pytest.importorskip("numba")
        monkeypatch.setattr(partition, "_force_fused", True)
    else:
        monkeypatch.setenv("LAYERED_NUMBA", "0")
    p = Partition((8, 4, 0, -2))
    a = np.random.default_rng(3).uniform(-255, 255, (700, 1000))
    comps = p.components(a)
    for got, want in zip(comps.digits, reference_digits(p, a), strict=True):
        np.testing.assert_array_equal(got, want)
    assert comps.off_grid and comps.abs_max == float(np.max(np.abs(a)))
    assert not p.components(p.truncate(a)).off_grid
    a[650, 999] = 300.0
    with pytest.raises(PartitionRangeError, match=r"a\[650, 999\] = 300\.0 is out of range"):
        p.components(a)
    a[650, 999], a[699, 5] = 1.0, np.nan
    with pytest.raises(ValueError, match=r"a\[699, 5\] = nan is not finite"):
        p.components(a)
    clipped = p.components(np.full(a.shape, 400.0), clip=True)
    assert clipped.clipped == a.size and clipped.abs_max is None


@pytest.mark.parametrize("points", [(8, 4, 0), (14, 7, 0), (24, 9, 1, -7), (40, 20, 0),
                                    (20, 0, -20)])
def test_split_in_integers_matches_truncation_for_every_span(points):
    # spans up to 15 bits shift in int16, up to 31 in int32, beyond in int64; values at
    # the edges of the range and of every component, of both signs
    p = Partition(points)
    rng = np.random.default_rng(len(points))
    top = p.limit - p.resolution
    edges = [top, -top, p.resolution, -p.resolution, 0.0] + [
        s * math.ldexp(1.0, e) for e in p.exponents for s in (1, -1)]
    a = np.concatenate([edges, rng.uniform(-1, 1, 500) * p.limit])
    comps = p.components(a)
    for got, want in zip(comps.digits, reference_digits(p, a), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype.itemsize * 8 > math.log2(max(1.0, float(np.max(np.abs(want)))))


@pytest.mark.parametrize("shape", [(700, 1000), (3, 1), (1, 70000), (40, 65536)])
def test_row_statistics_found_while_splitting_are_those_of_the_digits(shape, monkeypatch):
    # many blocks of whole rows; rows larger than a block get no statistics
    monkeypatch.setattr(partition, "_BLOCK", 1 << 16)
    p = Partition((8, 4, 0, -2))
    a = np.random.default_rng(5).uniform(-255, 255, shape)
    comps = p.components(a, row_stats=True)
    assert p.components(a).row_stats is None  # only when asked for
    if shape[1] > 1 << 16:
        assert comps.row_stats is None  # a row larger than a block: left to the reader
        return
    assert comps.row_stats is not None
    for digits, stats in zip(comps.digits, comps.row_stats, strict=True):
        mag = np.abs(digits.astype(np.int64))
        np.testing.assert_array_equal(stats, [mag.sum(axis=1), mag.max(axis=1)])
