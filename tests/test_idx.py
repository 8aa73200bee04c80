"""IDX reader and writer: round trips, the real MNIST files, and every malformed-file path."""

import gzip
import struct

import numpy as np
import pytest

from layered.data.idx import IdxFormatError, read_idx, write_idx


def _idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand from the format description, independent of write_idx."""
    return bytes((0, 0, code, len(shape))) + struct.pack(f">{len(shape)}I", *shape) + payload


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_then_read_round_trips_every_dtype(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_reader_decodes_a_hand_built_big_endian_file(tmp_path):
    values = [1, -2, 300, -40000]
    path = tmp_path / "ints-idx2-int"
    path.write_bytes(_idx_bytes(0x0C, (2, 2), struct.pack(">4i", *values)))
    assert read_idx(path).tolist() == [[1, -2], [300, -40000]]


def test_writer_output_matches_the_format_byte_for_byte(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == _idx_bytes(0x08, (3,), bytes([7, 2, 1]))


def test_reads_real_mnist_test_labels_like_a_direct_parse(shared_mnist_dir):
    path = shared_mnist_dir / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    assert raw[:8] == _idx_bytes(0x08, (10000,), b"")
    np.testing.assert_array_equal(read_idx(path), np.frombuffer(raw, np.uint8, offset=8))


def test_gzip_is_detected_by_magic_bytes_not_by_name(tmp_path):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (2,), b"\x05\x06")))
    assert read_idx(path).tolist() == [5, 6]


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_payload_names_file_and_byte_counts(tmp_path, compress):
    data = _idx_bytes(0x08, (4, 5), bytes(17))  # 20 bytes promised, 17 present
    path = tmp_path / "short-idx2-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IdxFormatError, match=r"short-idx2-ubyte.*truncated.*20 bytes.*found 17"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_garbage_is_an_error(tmp_path, compress):
    data = _idx_bytes(0x08, (3,), b"\x01\x02\x03") + b"junk"
    path = tmp_path / "long-idx1-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IdxFormatError, match=r"long-idx1-ubyte.*trailing data"):
        read_idx(path)


def test_truncated_gzip_stream_names_the_file(shared_mnist_dir, tmp_path):
    full = (shared_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(IdxFormatError, match=r"cut\.gz.*corrupt gzip"):
        read_idx(path)


def test_corrupted_gzip_bytes_are_an_error_not_garbage(shared_mnist_dir, tmp_path):
    data = bytearray((shared_mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path = tmp_path / "flipped.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match=r"flipped\.gz.*corrupt gzip"):
        read_idx(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + bytes(4), "first two bytes must be 00 00"),
        (b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX dtype code 0x0a"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "truncated header.*12 bytes, found 4"),
    ],
)
def test_bad_headers_are_rejected_with_the_reason(tmp_path, content, message):
    path = tmp_path / "bad-header"
    path.write_bytes(content)
    with pytest.raises(IdxFormatError, match=f"bad-header.*{message}"):
        read_idx(path)


def test_absurd_dimensions_fail_on_length_not_on_memory(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(_idx_bytes(0x0E, (2**31, 2**31), bytes(64)))
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read_idx(tmp_path / "absent")


def test_writer_rejects_unsupported_dtype_and_scalars(tmp_path):
    with pytest.raises(IdxFormatError, match="uint16"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))
    with pytest.raises(IdxFormatError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, dtype=np.uint8))
