"""MNIST loading, named sources, and verified download from a loopback HTTP server."""

import functools
import gzip
import hashlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from layered.data import mnist
from layered.data.idx import write_idx
from layered.data.mnist import (
    ChecksumMismatchError,
    DownloadError,
    default_cache_dir,
    download_mnist,
    even_odd_labels,
    load_dataset,
    load_mnist,
    pixels_to_unit,
    resolve_data_dir,
)

# Class counts of the shared 24,345-image training prefix, from the data's README.
PREFIX_CLASS_COUNTS = [2406, 2770, 2381, 2524, 2386, 2181, 2401, 2524, 2328, 2444]
TEST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _write_split(directory: Path, images: np.ndarray, labels: np.ndarray, split="test") -> None:
    prefix = "t10k" if split == "test" else "train"
    write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)


# ---------------------------------------------------------------------------- loading
def test_test_split_matches_a_direct_parse_of_the_files(shared_mnist_dir):
    images, labels = load_mnist(shared_mnist_dir, "test")
    raw_images = gzip.decompress((shared_mnist_dir / TEST_FILES[0]).read_bytes())
    raw_labels = gzip.decompress((shared_mnist_dir / TEST_FILES[1]).read_bytes())
    assert images.shape == (10000, 784) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        images, np.frombuffer(raw_images, np.uint8, offset=16).reshape(-1, 784)
    )
    np.testing.assert_array_equal(labels, np.frombuffer(raw_labels, np.uint8, offset=8))


def test_train_split_is_the_documented_prefix(shared_mnist_dir):
    images, labels = load_mnist(shared_mnist_dir, "train")
    assert images.shape == (24345, 784)
    assert np.bincount(labels, minlength=10).tolist() == PREFIX_CLASS_COUNTS


def test_uncompressed_files_load_too(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    _write_split(tmp_path, images, np.array([9, 0], dtype=np.uint8))
    got, labels = load_mnist(tmp_path, "test")
    np.testing.assert_array_equal(got, images.reshape(2, 784))
    assert labels.tolist() == [9, 0]


def test_missing_directory_names_path_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*train-images-idx3-ubyte\[\.gz\]"):
        load_mnist(tmp_path / "nowhere")


def test_missing_file_names_the_directory_and_the_split_files(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"has no t10k-labels-idx1-ubyte.*split 'test'"):
        load_mnist(tmp_path, "test")


def test_image_and_label_counts_must_agree(tmp_path):
    _write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        load_mnist(tmp_path, "test")


def test_labels_outside_zero_to_nine_are_rejected(tmp_path):
    _write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([1, 10, 2], np.uint8))
    with pytest.raises(ValueError, match=r"outside 0\.\.9, first at index 1 \(value 10\)"):
        load_mnist(tmp_path, "test")


def test_images_must_be_three_dimensional_uint8(tmp_path):
    _write_split(tmp_path, np.zeros((3, 784), np.float32), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"images must be uint8 of shape \(N, rows, cols\)"):
        load_mnist(tmp_path, "test")


def test_unknown_split_is_rejected(shared_mnist_dir):
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist(shared_mnist_dir, "validation")


def test_pixels_to_unit_divides_by_256_exactly():
    pixels = np.arange(256, dtype=np.uint8)
    unit = pixels_to_unit(pixels)
    assert unit.dtype == np.float64
    assert all(unit[k] == k / 256 for k in range(256))
    assert unit.max() == 255 / 256
    with pytest.raises(TypeError, match="float64"):
        pixels_to_unit(unit)


def test_even_odd_labels_mark_even_digits_as_one():
    assert even_odd_labels(np.arange(10, dtype=np.uint8)).tolist() == [1, 0] * 5


# ---------------------------------------------------------------------------- sources
def test_an_existing_directory_is_its_own_source(shared_mnist_dir):
    assert resolve_data_dir(shared_mnist_dir) == shared_mnist_dir
    images, _ = load_dataset(str(shared_mnist_dir), "test")
    assert images.shape == (10000, 784)


def test_unknown_source_lists_the_known_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist, fashion-mnist"):
        resolve_data_dir(tmp_path / "not-here")


def test_fashion_mnist_not_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        resolve_data_dir("fashion-mnist")


@pytest.mark.skipif(
    not mnist.FASHION_MNIST_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_loads_from_the_debian_package():
    images, labels = load_dataset("fashion-mnist", "test")
    assert images.shape == (10000, 784) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced


# ---------------------------------------------------------------------------- download
class _CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve() -> Iterator:
    """Start loopback HTTP servers for directories; yields ``serve(dir) -> (url, requests)``."""
    servers = []

    def start(directory: Path) -> tuple[str, list[str]]:
        requests: list[str] = []
        handler = type("Handler", (_CountingHandler,), {"requests": requests})
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_caches_the_served_files(serve, shared_mnist_dir, tmp_path):
    url, requests = serve(shared_mnist_dir)
    cache = download_mnist(tmp_path / "cache", mirrors=[url])
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", *TEST_FILES]
    )
    for name in TEST_FILES:  # byte-identical to the served (official) files
        assert (cache / name).read_bytes() == (shared_mnist_dir / name).read_bytes()
    for split in ("train", "test"):
        for got, want in zip(
            load_mnist(cache, split), load_mnist(shared_mnist_dir, split), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    assert len(requests) == 4


def test_cached_verified_files_are_not_downloaded_again(serve, shared_mnist_dir, tmp_path):
    url, requests = serve(shared_mnist_dir)
    download_mnist(tmp_path, splits=["test"], mirrors=[url])
    download_mnist(tmp_path, splits=["test"], mirrors=[url])
    assert sorted(requests) == sorted(f"/{name}" for name in TEST_FILES)


def test_a_corrupted_cached_file_is_replaced(serve, shared_mnist_dir, tmp_path):
    url, requests = serve(shared_mnist_dir)
    (tmp_path / TEST_FILES[1]).write_bytes(b"not the labels")
    download_mnist(tmp_path, splits=["test"], mirrors=[url])
    assert (tmp_path / TEST_FILES[1]).read_bytes() == (
        shared_mnist_dir / TEST_FILES[1]
    ).read_bytes()


def test_checksum_mismatch_names_file_and_digests_and_leaves_cache_empty(
    serve, shared_mnist_dir, tmp_path
):
    served = tmp_path / "served"
    served.mkdir()
    for name in TEST_FILES:
        shutil.copy(shared_mnist_dir / name, served / name)
    corrupt = bytearray((served / TEST_FILES[0]).read_bytes())
    corrupt[1000] ^= 0x01
    (served / TEST_FILES[0]).write_bytes(bytes(corrupt))
    url, _ = serve(served)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError) as caught:
        download_mnist(cache, splits=["test"], mirrors=[url])
    message = str(caught.value)
    assert TEST_FILES[0] in message
    assert "md5 9fb629c4189551a2d022fa330f9573f3" in message  # expected (official)
    assert f"md5 {hashlib.md5(bytes(corrupt)).hexdigest()}" in message  # got
    assert list(cache.iterdir()) == []


def test_missing_file_on_every_mirror_is_a_download_error_naming_each(serve, tmp_path):
    (tmp_path / "empty").mkdir()
    first, _ = serve(tmp_path / "empty")
    second, _ = serve(tmp_path / "empty")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="(?s)t10k-images.*404.*404"):
        download_mnist(cache, splits=["test"], mirrors=[first, second])
    assert list(cache.iterdir()) == []


def test_next_mirror_is_tried_when_one_fails(serve, shared_mnist_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    dead, _ = serve(tmp_path / "empty")
    good, requests = serve(shared_mnist_dir)
    download_mnist(tmp_path / "cache", splits=["test"], mirrors=[dead, good])
    assert len(requests) == 2


def test_a_silent_server_fails_fast_on_the_timeout(tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        started = time.monotonic()
        with pytest.raises(DownloadError, match="timed out"):
            download_mnist(tmp_path, splits=["test"], mirrors=[url], timeout=0.3)
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []


def test_cache_location_follows_layered_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERED_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mnist"
    monkeypatch.delenv("LAYERED_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "layered" / "mnist"


def test_mnist_by_name_downloads_into_the_env_cache(serve, shared_mnist_dir, tmp_path, monkeypatch):
    url, _ = serve(shared_mnist_dir)
    monkeypatch.setenv("LAYERED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAYERED_MNIST_MIRRORS", url)
    monkeypatch.chdir(tmp_path)  # so no ./mnist directory can shadow the name
    images, _ = load_dataset("mnist", "test")
    assert images.shape == (10000, 784)
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == TEST_FILES
