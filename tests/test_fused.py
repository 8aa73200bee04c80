"""The compiled one-pass split (numba) gives what the numpy passes give, bit for bit."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.layering import (
    Partition,
    PartitionRangeError,
    SplitOperand,
    fused,
    layered_matmul,
    partition,
)

pytest.importorskip("numba")


def both_ways(split):
    """``split()`` with the numpy passes, then with the compiled pass."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("LAYERED_NUMBA", "0")
        numpy_way = split()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(partition, "_force_fused", True)
        m.setattr(fused, "_load", _counting(fused._load))
        compiled = split()
        assert _counting.calls, "the compiled pass did not run"
    return numpy_way, compiled


def _counting(load):
    _counting.calls = 0

    def counted():
        _counting.calls += 1
        return load()

    return counted


def assert_same(a, b):
    assert (a.abs_max, a.off_grid, a.clipped) == (b.abs_max, b.off_grid, b.clipped)
    assert a.exponents == b.exponents and a.widths == b.widths
    for x, y in zip(a.digits, b.digits, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert (a.row_stats is None) == (b.row_stats is None)
    for x, y in zip(a.row_stats or [], b.row_stats or [], strict=True):
        np.testing.assert_array_equal(x, y)


@st.composite
def cases(draw):
    # one digit dtype for all components (the compiled pass's case): widths up to 7 bits
    # (int8) or 8..15 (int16)
    wide = draw(st.booleans())
    widths = draw(st.lists(st.integers(8, 15) if wide else st.integers(1, 7),
                           min_size=1, max_size=3))
    p0 = draw(st.integers(-8, 30))
    points = [p0]
    for w in widths:
        points.append(points[-1] - w)
    p = Partition(points)
    rows, columns = draw(st.integers(1, 40)), draw(st.integers(1, 300))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return p, (rows, columns), dtype, draw(st.integers(0, 2**32 - 1)), draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_compiled_split_equals_the_numpy_passes(case):
    p, shape, dtype, seed, on_grid = case
    rng = np.random.default_rng(seed)
    top = p.limit - p.resolution  # the largest magnitude on the finest grid
    a = rng.uniform(-1, 1, shape) * p.limit
    if on_grid:
        a = p.truncate(np.clip(a, -top, top))
    # digits at their extremes: the largest value of either sign, the finest step, zeros
    flat = a.reshape(-1)
    extremes = [top, -top, p.resolution, -p.resolution, 0.0, -0.0]
    flat[: len(extremes)] = extremes[: flat.size]
    a = a.astype(dtype)
    if np.any(np.abs(a) >= p.limit):  # float32 rounding may reach 2**p0
        a = np.where(np.abs(a) >= p.limit, 0, a).astype(dtype)
    for row_stats in (False, True):
        assert_same(*both_ways(lambda rs=row_stats: p.components(a, row_stats=rs)))


@pytest.mark.parametrize("points", [(8, 4, 0), (14, 7, 0), (40, 20, 0), (20, 10, 0, -10)])
def test_compiled_split_at_every_span(points):
    # int16 and int32 digits, spans beyond 31 bits; values at the edges of every component
    p = Partition(points)
    edges = [p.limit - p.resolution, p.resolution] + [math.ldexp(1.0, e) for e in p.exponents]
    a = np.concatenate([edges, np.negative(edges),
                        np.random.default_rng(1).uniform(-1, 1, 5000) * p.limit])
    assert_same(*both_ways(lambda: p.components(a)))


def test_compiled_split_clips_like_the_numpy_passes():
    # (bad values are named alike: tests/test_partition.py, with compiled=True)
    clipped = both_ways(lambda: Partition((8, 4, 0)).components(np.full((3, 5), 400.0),
                                                                clip=True))
    assert_same(*clipped)
    assert clipped[1].clipped == 15 and clipped[1].abs_max is None


def test_layered_product_on_compiled_splits_equals_one_shot(monkeypatch):
    monkeypatch.setattr(partition, "_force_fused", True)
    rng = np.random.default_rng(4)
    p = Partition((8, 4, 0))
    w = rng.integers(-255, 256, (64, 96)).astype(np.float64)
    x = rng.integers(-255, 256, (96, 5)).astype(np.float32)
    results = list(layered_matmul(w, x, p, p, kernel="numpy"))
    np.testing.assert_array_equal(results[-1].estimate, w @ x.astype(np.float64))
    for r in results:
        assert np.all(np.abs(w @ x.astype(np.float64) - r.estimate) <= r.bound)
    split = SplitOperand(w, p, name="W")
    assert split.components.row_stats is None or len(split.components.row_stats) == 2


def test_the_size_rule_and_the_switch(monkeypatch):
    small = np.zeros(10)
    dtypes = [np.dtype(np.int8)]
    assert fused.fused_split_usable(small, dtypes, (8, 0), force=True)
    monkeypatch.setenv("LAYERED_NUMBA", "0")
    assert not fused.fused_split_usable(small, dtypes, (8, 0), force=True)
    monkeypatch.delenv("LAYERED_NUMBA")
    # integers, mixed digit dtypes and spans beyond int64 stay with the numpy passes
    assert not fused.fused_split_usable(np.zeros(10, np.int32), dtypes, (8, 0), force=True)
    assert not fused.fused_split_usable(small, dtypes + [np.dtype(np.int16)], (8, 0), force=True)
    assert not fused.fused_split_usable(small, dtypes, (63, 0), force=True)
    # a small array is not worth loading numba for; a large one is
    monkeypatch.setattr(fused, "_MIN_VALUES_LOADED", 100)
    assert not fused.fused_split_usable(small, dtypes, (8, 0))
    assert fused.fused_split_usable(np.zeros(100), dtypes, (8, 0))  # numba is loaded by now


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_thin_products_on_the_digits_equal_the_integer_products(dtype):
    rng = np.random.default_rng(6)
    top = np.iinfo(dtype).max
    digits = rng.integers(-top, top + 1, (300, 257)).astype(dtype)
    digits[0] = top  # a row at the extreme, against columns at theirs
    rights = [rng.integers(-15, 16, (257, n)).astype(np.float32) for n in (1, 3)]
    rights[0][:, 0] = 15
    got = fused.thin_products(digits, rights, 2**24, force=True)
    assert got is not None
    for out, right in zip(got, rights, strict=True):
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, digits.astype(np.int64) @ right.astype(np.int64))
    # partial sums beyond int32, wide right operands, or float digits: not this path
    assert fused.thin_products(digits, rights, 2**32, force=True) is None
    assert fused.thin_products(digits, [np.zeros((257, 9), np.float32)], 2**24,
                               force=True) is None
    assert fused.thin_products(digits.astype(np.float32), rights, 2**24, force=True) is None


def test_layered_gemv_on_compiled_splits_and_thin_products(monkeypatch):
    monkeypatch.setattr(fused, "_MIN_VALUES", 1)
    monkeypatch.setattr(fused, "_MIN_VALUES_LOADED", 1)
    rng = np.random.default_rng(7)
    p = Partition((8, 4, 0))
    w = rng.integers(-255, 256, (500, 700)).astype(np.float64)
    x = rng.integers(-255, 256, (700, 2)).astype(np.float64)
    exact = w @ x
    results = list(layered_matmul(w, x, p, p, kernel="numpy"))
    assert "int8" in results[0].dtypes  # the digits as they are, not converted
    np.testing.assert_array_equal(results[-1].estimate, exact)
    for r in results:
        assert np.all(np.abs(exact - r.estimate) <= r.bound)


def test_a_forked_child_of_a_process_that_ran_the_compiled_pass_takes_the_numpy_passes(
        monkeypatch):
    fused.thin_products(np.ones((4, 4), np.int8), [np.ones((4, 1), np.float32)], 2**24,
                        force=True)
    assert fused._launched_in is not None
    monkeypatch.setattr(fused, "_launched_in", fused._launched_in + 1)  # as in a child
    assert not fused.fused_split_usable(np.zeros(10), [np.dtype(np.int8)], (8, 0), force=True)


@pytest.mark.parametrize("points", [(0, -1, -2, -3, -4), (8, 4, 0), (3, -12)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inference_inputs_split_in_the_compiled_pass_as_in_numpy(points, dtype, monkeypatch):
    from layered.layering import network

    p = Partition(points)
    rng = np.random.default_rng(8)
    for low in (0.0, -1.0):  # inputs that all truncate to >= 0, and ones that do not
        x = (rng.uniform(low, 1, (50, 70)) * (p.limit - p.resolution)).astype(dtype)
        with pytest.MonkeyPatch.context() as m:
            m.setenv("LAYERED_NUMBA", "0")
            expected = network._input_units(x, p, clip=False)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(fused, "_MIN_VALUES", 1)
            got = network._input_units(x, p, clip=False)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[0].dtype == expected[0].dtype and got[1:] == expected[1:]
    x[3, 4] = p.limit
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fused, "_MIN_VALUES", 1)
        with pytest.raises(PartitionRangeError, match=r"input X\[3, 4\]"):
            network._input_units(x, p, clip=False)


def test_a_mid_sized_split_loads_numba_in_the_background_for_the_next(monkeypatch):
    monkeypatch.setattr(fused, "_kernels", None)
    monkeypatch.setattr(fused, "_loading", fused.threading.Thread())
    monkeypatch.setattr(fused, "_PRELOAD_VALUES", 100)
    p = Partition((8, 4, 0))
    a = np.random.default_rng(9).uniform(-255, 255, (20, 30))
    with monkeypatch.context() as m:  # a process held to one thread (a Dask worker)
        m.setattr(fused, "_threads", lambda: 1)
        p.components(a)
        assert not fused._loading.is_alive() and fused._kernels is None
    monkeypatch.setattr(fused, "_threads", lambda: 2)
    first = p.components(a)  # the numpy passes, while numba loads
    fused._loading.join(timeout=120)
    assert fused._kernels is not None
    monkeypatch.setattr(fused, "_MIN_VALUES_LOADED", 100)
    monkeypatch.setattr(fused, "_launched_in", None)
    assert_same(first, p.components(a))  # now compiled: the same
    assert fused._launched_in is not None
