"""Matmul operands: seeded synthetic data, validated files."""

import numpy as np
import pytest
import zarr

from layered.data.operands import (
    OperandError,
    check_matmul_shapes,
    open_operand,
    scan_operand,
    synthetic_operands,
)
from layered.layering import Partition, PartitionRangeError


def test_synthetic_operands_are_seeded_int8_in_the_twos_complement_range():
    W, X = synthetic_operands((50, 40, 3), seed=5)
    W2, X2 = synthetic_operands((50, 40, 3), seed=5)
    assert W.dtype == np.int8 and X.shape == (40, 3)
    assert np.array_equal(W, W2) and np.array_equal(X, X2)
    assert not np.array_equal(W, synthetic_operands((50, 40, 3), seed=6)[0])
    assert W.min() >= -128 and W.max() <= 127


def test_synthetic_operands_of_more_bits_use_a_wider_dtype():
    W, _ = synthetic_operands((200, 200, 1), seed=0, value_bits=12)
    assert W.dtype == np.int16 and W.min() >= -2048 and W.max() <= 2047 and W.max() > 127


@pytest.mark.parametrize("shape", [(3, 4), (0, 2, 2), (2, -1, 2)])
def test_synthetic_shape_must_be_three_positive_integers(shape):
    with pytest.raises(OperandError, match="three positive integers"):
        synthetic_operands(shape, seed=0)


def test_npy_and_zarr_operands_are_read_by_rows_with_the_same_digest(tmp_path):
    a = np.arange(60, dtype=np.float32).reshape(12, 5) - 30
    np.save(tmp_path / "a.npy", a)
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=a.shape, dtype=a.dtype,
                          chunks=(5, 5))
    z[:] = a
    npy, zar = open_operand(tmp_path / "a.npy", "W"), open_operand(tmp_path / "a.zarr", "W")
    assert (npy.kind, zar.kind) == ("npy", "zarr")
    assert npy.shape == zar.shape == (12, 5)
    assert np.array_equal(npy.rows(3, 7), a[3:7]) and np.array_equal(zar.rows(3, 7), a[3:7])
    assert scan_operand(npy, "W").sha256 == scan_operand(zar, "W").sha256
    assert scan_operand(npy, "W").max_abs == 30.0


def test_a_one_dimensional_x_is_a_column(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(4.0))
    x = open_operand(tmp_path / "x.npy", "X")
    assert x.shape == (4, 1) and np.array_equal(x.read()[:, 0], np.arange(4.0))
    np.save(tmp_path / "w.npy", np.arange(4.0))
    with pytest.raises(OperandError, match="must be a 2-D array"):
        open_operand(tmp_path / "w.npy", "W")


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((0, 3)), "is empty"),
        (np.zeros((2, 2, 2)), "must be a 2-D array"),
        (np.array([["a", "b"]]), "expected real integers or floats"),
        (np.ones((2, 2), dtype=complex), "expected real integers or floats"),
    ],
)
def test_unusable_operand_files_are_refused_naming_the_file(tmp_path, array, problem):
    np.save(tmp_path / "w.npy", array)
    with pytest.raises(OperandError, match=problem) as err:
        open_operand(tmp_path / "w.npy", "W")
    assert "w.npy" in str(err.value)


def test_a_missing_or_unreadable_file_is_refused(tmp_path):
    with pytest.raises(OperandError, match="does not exist"):
        open_operand(tmp_path / "nope.npy", "W")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    with pytest.raises(OperandError, match="cannot read"):
        open_operand(tmp_path / "junk.npy", "W")


def test_mismatched_shapes_name_both_operands(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((3, 4)))
    np.save(tmp_path / "x.npy", np.ones((5, 2)))
    w, x = open_operand(tmp_path / "w.npy", "W"), open_operand(tmp_path / "x.npy", "X")
    with pytest.raises(OperandError, match=r"W \(3, 4\).*4 columns.*X \(5, 2\).*5 rows"):
        check_matmul_shapes(w, x)


def test_non_finite_values_are_found_at_their_global_index(tmp_path):
    a = np.zeros((5000, 3000), dtype=np.float32)  # several scan blocks
    a[4321, 17] = np.nan
    np.save(tmp_path / "w.npy", a)
    with pytest.raises(OperandError, match=r"W\[4321, 17\] = nan .* is not finite"):
        scan_operand(open_operand(tmp_path / "w.npy", "W"), "W")


def test_values_outside_an_explicit_partition_are_refused(tmp_path):
    a = np.zeros((4, 4))
    a[2, 3] = -16.0
    np.save(tmp_path / "w.npy", a)
    with pytest.raises(PartitionRangeError, match=r"W\[2, 3\] = -16.0 .* < 2\^p_0 = 16"):
        scan_operand(open_operand(tmp_path / "w.npy", "W"), "W", Partition((4, 2, 0)))


def test_synthetic_operands_written_block_by_block_equal_those_made_in_memory(
    tmp_path, monkeypatch
):
    import layered.data.operands as operands

    monkeypatch.setattr(operands, "_SYNTHETIC_BLOCK_BYTES", 64)  # W in 6 blocks of <= 9 rows
    shape, dtype = (50, 7, 3), operands.synthetic_dtype(8)
    paths = [str(tmp_path / name) for name in ("w.npy", "x.npy")]
    for path, dims in zip(paths, [(50, 7), (7, 3)], strict=True):
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=dims).flush()
    operands.write_synthetic_operands(shape, 4, 8, *paths)
    W, X = operands.synthetic_operands(shape, 4)
    assert np.array_equal(np.load(paths[0]), W) and np.array_equal(np.load(paths[1]), X)
    assert W.dtype == np.int8 and W.min() >= -128 and W.max() <= 127
    assert len({tuple(W[i]) for i in range(50)}) == 50  # no block repeats another
    assert not np.array_equal(W, operands.synthetic_operands(shape, 5)[0])
