"""Product kernels: every kernel exact and bit-identical, and ``auto`` never picks one that
is not exact or not available here."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layered.layering import (
    KernelUnavailableError,
    NumpyKernel,
    Partition,
    layered_matmul,
    resolve_kernel,
)
from layered.layering import kernel as kernel_module

INT8 = np.dtype(np.int8)
# the largest inner size at which int8 digits of magnitude 127 sum exactly in int32
K_INT32_LIMIT = (2**31 - 1) // (127 * 127)


def test_library_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import layered.layering as L;"
            " assert L.resolve_kernel().name == 'numpy', L.resolve_kernel().name")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_kernel_or_device_is_rejected():
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        resolve_kernel("fast")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_kernel("auto", "tpu")
    with pytest.raises(ValueError, match="kernel='numpy' runs on the CPU"):
        resolve_kernel("numpy", "cuda")


def test_missing_torch_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(KernelUnavailableError, match=r'pip install -e "\.\[torch\]"'):
        resolve_kernel("torch")
    with pytest.raises(KernelUnavailableError, match="needs torch, which is not installed"):
        list(layered_matmul(np.ones((2, 2)), np.ones((2, 2)), Partition((2, 0)),
                            Partition((2, 0)), kernel="torch"))
    assert resolve_kernel("auto").name == "numpy"


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("torch", "auto"):
        with pytest.raises(KernelUnavailableError, match="needs a CUDA GPU, but none is visible"):
            resolve_kernel(name, "cuda")


def test_auto_uses_torch_on_the_cpu_only_with_an_int8_engine(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(kernel_module, "_cuda_visible", lambda torch: False)
    monkeypatch.setattr(kernel_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_kernel("auto").name == "numpy"
    monkeypatch.setattr(kernel_module, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    monkeypatch.setattr(kernel_module, "_probe_passes", lambda device: True)
    assert resolve_kernel("auto").name == "torch-cpu"
    monkeypatch.setattr(kernel_module, "cpu_flags", lambda: frozenset({"amx_int8"}))
    assert resolve_kernel("auto", "cpu").name == "torch-cpu"


def test_auto_never_picks_an_engine_that_fails_its_probe(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(kernel_module, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    monkeypatch.setattr(kernel_module, "_cuda_visible", lambda torch: True)
    monkeypatch.setattr(kernel_module, "_probe_passes", lambda device: False)
    assert resolve_kernel("auto").name == "numpy"


def test_probe_rejects_an_int8_engine_that_saturates(monkeypatch):
    pytest.importorskip("torch")

    def saturating(self, a, b):
        # u8 x s8 pairs summed in saturating int16 (vpmaddubsw, the AVX2 int8 path), with
        # the +128 shift of the signed operand compensated afterwards
        shifted = a.astype(np.int64) + 128
        pairs = shifted[:, None, :] * b.astype(np.int64).T[None, :, :]
        sums = np.clip(pairs[..., 0::2] + pairs[..., 1::2], -(2**15), 2**15 - 1).sum(-1)
        return sums - 128 * b.astype(np.int64).sum(axis=0)

    probe = kernel_module._probe_passes.__wrapped__
    assert probe("cpu")
    monkeypatch.setattr(kernel_module.TorchKernel, "product", saturating)
    assert not probe("cpu")


def test_int8_rule_stops_where_int32_partial_sums_could_overflow():
    pytest.importorskip("torch")
    kernel = resolve_kernel("torch", "cpu")
    limit = K_INT32_LIMIT * 127 * 127
    assert limit < 2**31 <= (K_INT32_LIMIT + 1) * 127 * 127
    assert kernel.dtype_for(limit, 127) == INT8
    assert kernel.dtype_for(limit + 127 * 127, 127) == np.float64
    assert kernel.dtype_for(1000, 128) == np.float32  # digits beyond int8: numpy's rule
    assert NumpyKernel().dtype_for(limit, 127) == np.float64
    kernel.resident = True  # on a GPU, float32 GEMMs may round through TF32
    assert kernel.dtype_for(1000, 128) == np.float64


def test_int8_product_is_exact_at_the_int32_limit():
    pytest.importorskip("torch")
    kernel = resolve_kernel("torch", "cpu")
    k = K_INT32_LIMIT
    w = np.full((3, k), 127, dtype=np.int8)
    w[1] = -127
    w[2, ::2] = -127
    x = np.full((k, 2), 127, dtype=np.int8)
    x[:, 1] = -127
    got = kernel.product(kernel.prepare(w, INT8), kernel.prepare(x, INT8))
    np.testing.assert_array_equal(got, w.astype(np.int64) @ x.astype(np.int64))
    assert got[0, 0] == k * 127 * 127
    # the same operands through the layered product: int8 at the limit, exact
    p = Partition((7, 0))
    (res,) = layered_matmul(w.astype(float), x.astype(float), p, p, kernel=kernel)
    assert res.dtypes == ("int8",)
    np.testing.assert_array_equal(res.estimate, w.astype(np.int64) @ x.astype(np.int64))


@st.composite
def int8_problems(draw):
    """Operands whose digits are int8-sized (widths up to 7), often at their extremes."""
    m, k, n = draw(st.integers(1, 20)), draw(st.integers(1, 300)), draw(st.integers(1, 20))

    def operand(rows, cols):
        p0 = draw(st.integers(-2, 10))
        widths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
        p = Partition([p0] + [p0 - sum(widths[: i + 1]) for i in range(len(widths))])
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        top = p.limit - p.resolution  # every digit at its largest magnitude
        kind = draw(st.sampled_from(["uniform", "extreme", "mixed"]))
        if kind == "uniform":
            a = rng.uniform(-1, 1, (rows, cols)) * p.limit * 0.999
        else:
            a = rng.choice([-top, top], (rows, cols))
            if kind == "mixed":
                a = np.where(rng.random((rows, cols)) < 0.5, a, 0.0)
        return a, p

    (W, pw), (X, px) = operand(m, k), operand(k, n)
    return W, X, pw, px


@pytest.mark.parametrize("ordering", ["anti-diagonal", "shells"])
@pytest.mark.parametrize("reuse", ["none", "auto"])
@settings(max_examples=30, deadline=None)
@given(problem=int8_problems())
def test_torch_kernel_is_bit_identical_to_numpy(ordering, reuse, problem):
    pytest.importorskip("torch")
    W, X, pw, px = problem
    runs = [list(layered_matmul(W, X, pw, px, ordering=ordering, reuse=reuse, kernel=kernel))
            for kernel in ("numpy", "torch")]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.estimate, b.estimate)
        np.testing.assert_array_equal(a.bound, b.bound)
    assert all(d == "int8" for r in runs[1] for d in r.dtypes)


def device_resident_kernel():
    """The GPU code path (padded int8 operands, tensors kept on the device until read),
    run with the device's tensors in host memory, so it is tested without a GPU."""
    kernel = resolve_kernel("torch", "cpu")
    kernel.resident = True
    return kernel


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (17, 8, 9), (40, 300, 24)])
@pytest.mark.parametrize("points", [(14, 7, 0), (8, 4, 0), (9, 6, 3, 0)])
def test_device_resident_path_keeps_results_on_the_device_and_exact(shape, points):
    torch = pytest.importorskip("torch")
    m, k, n = shape
    p = Partition(points)
    rng = np.random.default_rng(m * k * n)
    top = p.limit - p.resolution
    W = rng.integers(-top, top + 1, (m, k)).astype(float)
    X = rng.choice([-top, top], (k, n))
    kernel = device_resident_kernel()
    ref = list(layered_matmul(W, X, p, p, kernel="numpy"))
    kept = list(layered_matmul(W, X, p, p, kernel=kernel, to_host=False))
    read = list(layered_matmul(W, X, p, p, kernel=kernel))
    for a, b, c in zip(ref, kept, read, strict=True):
        assert isinstance(b.estimate, torch.Tensor) and isinstance(c.estimate, np.ndarray)
        np.testing.assert_array_equal(b.estimate.numpy(), a.estimate)
        np.testing.assert_array_equal(c.estimate, a.estimate)
        # the same bound up to the order of float64 additions, and it holds
        np.testing.assert_allclose(np.broadcast_to(c.bound, a.estimate.shape),
                                   np.broadcast_to(a.bound, a.estimate.shape), rtol=1e-14)
        assert np.all(np.abs(W @ X - c.estimate) <= c.bound)
        assert b.max_bound == pytest.approx(a.max_bound, rel=1e-14)
    assert all(d in ("int8", "float64") for r in kept for d in r.dtypes)


def test_row_blocks_on_the_device_continue_from_host_estimates():
    pytest.importorskip("torch")
    from layered.layering import Ordering, SplitOperand, resolution_block

    p = Partition((14, 7, 0))
    rng = np.random.default_rng(5)
    W = rng.integers(-(2**14) + 1, 2**14, (30, 50)).astype(float)
    X = rng.integers(-(2**14) + 1, 2**14, (50, 4)).astype(float)
    order = Ordering.anti_diagonal(2, 2)
    w, x = SplitOperand(W[10:], p, name="W"), SplitOperand(X, p, name="X")
    whole = list(layered_matmul(W, X, p, p, kernel="numpy"))
    previous, kept = None, None
    for r in range(1, order.resolutions + 1):
        res, kept = resolution_block(w, x, order, r, previous, kept=kept, reuse="auto",
                                     kernel=device_resident_kernel())
        np.testing.assert_array_equal(res.estimate, whole[r - 1].estimate[10:])
        previous = res.estimate


def test_auto_does_not_import_torch_into_a_process_with_little_memory(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(kernel_module, "_cuda_visible", lambda torch: False)
    monkeypatch.setattr(kernel_module, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    monkeypatch.setattr(kernel_module, "_probe_passes", lambda device: True)
    small = 256 * 2**20  # a Dask worker limited to 256 MiB: torch alone takes most of it
    assert resolve_kernel("auto", memory_limit=16 * 2**30).name == "torch-cpu"
    assert resolve_kernel("auto", memory_limit=small).name == "torch-cpu"  # imported already
    monkeypatch.delitem(sys.modules, "torch")  # as if not imported yet (restored after)
    assert resolve_kernel("auto", memory_limit=small).name == "numpy"
    assert "torch" not in sys.modules


@pytest.mark.parametrize("scale", [1e6, 1e-300])  # offsets in range, and beyond it
def test_device_resident_path_rescales_per_row_and_per_column_partitions(scale):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    W = rng.normal(size=(12, 40)) * np.logspace(-6, 6, 12)[:, None]
    X = rng.normal(size=(40, 5)) * np.array([[scale, 1.0, 1e-3, 1e3, 0.0]])
    pw, px = Partition.auto(W, (7,) * 4, axis=1), Partition.auto(X, (7,) * 4, axis=0)
    ref = list(layered_matmul(W, X, pw, px, kernel="numpy"))
    kept = list(layered_matmul(W, X, pw, px, kernel=device_resident_kernel(), to_host=False))
    for a, b in zip(ref, kept, strict=True):
        assert isinstance(b.estimate, torch.Tensor)
        np.testing.assert_array_equal(b.estimate.numpy(), a.estimate)
        bound = b.bound.numpy() if isinstance(b.bound, torch.Tensor) else b.bound
        np.testing.assert_allclose(np.broadcast_to(bound, a.estimate.shape),
                                   np.broadcast_to(a.bound, a.estimate.shape), rtol=1e-14)


def test_row_blocks_stay_on_the_calling_thread_where_omp_num_threads_is_one(monkeypatch):
    """A Dask worker process (OMP_NUM_THREADS=1) runs its blocks on its own thread."""
    import threading

    def blocks_threads():
        seen = set()
        kernel_module.over_row_blocks(64, 1, lambda a, b: seen.add(threading.get_ident()))
        return seen

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert kernel_module.thread_count() == 1
    assert blocks_threads() == {threading.get_ident()}
    monkeypatch.delenv("OMP_NUM_THREADS")
    if kernel_module.thread_count() > 1:
        assert blocks_threads() - {threading.get_ident()}
