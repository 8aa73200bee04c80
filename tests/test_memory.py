"""Large results reuse the pages of earlier ones only once nothing references them."""

import gc

import numpy as np
import pytest

from layered.layering import memory
from layered.layering.kernel import NumpyKernel


@pytest.fixture(autouse=True)
def fresh_buffers(monkeypatch):
    monkeypatch.setattr(memory, "_buffers", type(memory._buffers)())


def address(a):
    return a.__array_interface__["data"][0]


def test_a_result_in_use_is_never_handed_out_again():
    shape = (1024, 1024)  # 8 MiB of float64
    first = memory.output(shape, np.float64)
    first[...] = 1.0
    view = first[10:20]
    second = memory.output(shape, np.float64)
    assert address(second) != address(first)
    del first
    third = memory.output(shape, np.float64)  # a view of the first is still alive
    assert address(third) not in (address(second), address(view) - 10 * 1024 * 8)
    assert np.all(view == 1.0)


def test_a_dropped_result_gives_its_pages_to_the_next_of_that_size():
    first = memory.output((1024, 1024), np.float64)
    where = address(first)
    del first
    gc.collect()
    again = memory.output((2048, 1024), np.float32)  # same bytes, other shape and dtype
    assert address(again) == where and again.shape == (2048, 1024)
    assert again.dtype == np.float32 and again.flags.c_contiguous
    other = memory.output((512, 1024), np.float64)  # other size: a new buffer
    assert address(other) != where


def test_small_arrays_come_from_numpy_and_idle_buffers_are_bounded(monkeypatch):
    assert memory.output((10, 10), np.float64).base is None
    monkeypatch.setattr(memory, "_IDLE_BYTES", 20 << 20)
    for rows in range(1, 8):  # seven free buffers of different sizes, 8 MiB and up
        memory.output((1024 * rows, 1024), np.float64)
    sizes = [b.nbytes for b in memory._buffers.values()]
    # the oldest were dropped; the newest was in use while the others were trimmed
    assert len(sizes) < 7 and sum(sizes[:-1]) <= 20 << 20


def test_kernel_results_stay_correct_across_reused_buffers():
    kernel = NumpyKernel()
    rng = np.random.default_rng(0)
    a = rng.integers(-8, 8, (1024, 512)).astype(np.float32)
    b = rng.integers(-8, 8, (512, 1100)).astype(np.float32)
    kept = []
    for step in range(4):  # keep every other result: the others' pages are reused
        product = kernel.product(a, b + step)
        estimate = kernel.combine([(3, [(1, product)])], None)
        np.testing.assert_array_equal(estimate, 8.0 * (a.astype(np.float64) @ (b + step)))
        if step % 2 == 0:
            kept.append((step, estimate))
    for step, estimate in kept:
        np.testing.assert_array_equal(estimate, 8.0 * (a.astype(np.float64) @ (b + step)))
