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


@pytest.mark.parametrize(("environ", "off"), [(None, True), ("1", False), ("0", True)])
def test_plain_pages_turns_numpy_huge_page_advice_off_unless_numpy_is_told_otherwise(
    environ, off
):
    import os
    import subprocess
    import sys

    script = ("import numpy._core.multiarray as m\n"
              "from layered.layering.memory import plain_pages\n"
              "done = plain_pages()\n"
              "print(done, m._set_madvise_hugepage(True))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if environ is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = environ
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    # whether it acted, and the advice it left (numpy's own when told by its variable)
    assert out == [str(off), str(not off and environ != "0")]


def test_keep_freed_memory_lets_a_process_reuse_the_pages_it_freed():
    import subprocess
    import sys

    # A fresh process making and dropping 2 MiB arrays: with glibc keeping what is freed,
    # the second round finds its pages mapped already (few page faults, not ~512 each).
    script = (
        "import resource, numpy as np\n"
        "from layered.layering.memory import keep_freed_memory\n"
        "import sys\n"
        "if sys.argv[1] == '1' and not keep_freed_memory(1 << 30):\n"
        "    print('unsupported')\n"
        "    raise SystemExit\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(3): a = np.ones(1 << 18); del a\n"
        "before = faults()\n"
        "for _ in range(20): a = np.ones(1 << 18); del a\n"
        "print(faults() - before)\n"
    )
    kept, given_back = (subprocess.run(
        [sys.executable, "-c", script, flag], capture_output=True, text=True, check=True,
        env={"MALLOC_TRIM_THRESHOLD_": "65536", "PATH": ""}).stdout.strip()
        for flag in ("1", "0"))
    if kept == "unsupported":
        pytest.skip("not glibc")
    assert int(kept) < 100 < int(given_back)
