"""Bad input, through the ``layered`` command and the library: each a clear error naming
what is wrong, and nothing written.

The command runs in-process on a store and a Prefect home of the test's own; every case
checks the exit status 2 (bad input: nothing started), the message, and that the store is
exactly as before (for hand-edited manifests: the same files, sizes and times) and no
Prefect home was created.
"""

import functools
import gzip
import json
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import SHARED_MNIST_DIR
from runs import snapshot

from layered.cli import main
from layered.data.idx import IdxFormatError, write_idx
from layered.data.mnist import load_mnist
from layered.data.store import RunStore
from layered.layering import Partition, PartitionRangeError, layered_matmul
from layered.request import MatmulRequest, resolve_matmul
from layered.settings import Settings

# Every case also names a scheduler nobody runs: an input error must come before it.
NOWHERE = ["--address", "tcp://127.0.0.1:1"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A store and a Prefect home of this test only; no Prefect API to report to."""
    monkeypatch.setenv("LAYERED_PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("LAYERED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path


def refused(capsys, directory, *argv):
    """Run ``layered ARGV`` on ``directory/runs``; assert it was refused, changing nothing.

    Returns the error message.
    """
    store = directory / "runs"
    before = snapshot(store)
    code = main([*argv, "--store", str(store), *NOWHERE])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("layered: error: ") and "Traceback" not in err
    assert snapshot(store) == before
    assert not (directory / "prefect-home").exists()
    return err


# --------------------------------------------------------------------------- operands
def npy(directory, name, array):
    path = directory / name
    np.save(path, array, allow_pickle=array.dtype.hasobject)
    return str(path)


def damaged(directory, name, content):
    path = directory / name
    path.write_bytes(content)
    return str(path)


def zarr_array(directory, name, array):
    path = directory / name
    z = zarr.create_array(store=str(path), shape=array.shape, dtype=array.dtype, chunks=(2, 2))
    z[:] = array
    return str(path)


W_OK, X_OK = np.ones((4, 3)), np.ones((3, 2))

OPERAND_CASES = {
    "inf in X": (lambda d: [npy(d, "w.npy", W_OK), npy(d, "x.npy", np.array(
        [[1.0, np.inf], [1, 1], [1, 1]]))], r"operand X\[0, 1\] = inf in .*x\.npy is not finite"),
    "-inf in W": (lambda d: [npy(d, "w.npy", np.array([[1, 1, -np.inf]])), npy(d, "x.npy", X_OK)],
                  r"operand W\[0, 2\] = -inf .* is not finite"),
    "NaN in float32": (lambda d: [npy(d, "w.npy", np.array([[1, np.nan, 1]], np.float32)),
                                  npy(d, "x.npy", X_OK)], r"operand W\[0, 1\] = nan"),
    "NaN in zarr": (lambda d: [npy(d, "w.npy", W_OK), zarr_array(d, "x.zarr", np.array(
        [[1.0, 1], [1, 1], [np.nan, 1]]))], r"operand X\[2, 0\] = nan in .*x\.zarr"),
    "out of partition range": (lambda d: [npy(d, "w.npy", W_OK), npy(d, "x.npy", np.array(
        [[1.0, 1], [1, -16], [1, 1]])), "--partition", "4", "0", "-2"],
        r"operand X\[1, 1\] = -16.0 .* out of range for partition \(4, 0, -2\): \|value\| must"
        r" be < 2\^p_0 = 16"),
    "shapes mismatch": (lambda d: [npy(d, "w.npy", W_OK), npy(d, "x.npy", np.ones((4, 2)))],
                        r"mismatched shapes: W \(4, 3\) .* has 3 columns but X \(4, 2\)"),
    "3-D operand": (lambda d: [npy(d, "w.npy", np.ones((2, 4, 3))), npy(d, "x.npy", X_OK)],
                    r"operand W .* must be a 2-D array, got shape \(2, 4, 3\)"),
    "0-D operand": (lambda d: [npy(d, "w.npy", W_OK), npy(d, "x.npy", np.float64(2))],
                    r"operand X .* must be a 2-D array, got shape \(\)"),
    "empty X": (lambda d: [npy(d, "w.npy", W_OK), npy(d, "x.npy", np.ones((3, 0)))],
                r"operand X .* is empty \(shape \(3, 0\)\)"),
    "strings": (lambda d: [npy(d, "w.npy", np.array([["1", "2", "3"]])), npy(d, "x.npy", X_OK)],
                r"operand W .* has dtype <U1; expected real integers or floats"),
    "complex": (lambda d: [npy(d, "w.npy", W_OK + 1j), npy(d, "x.npy", X_OK)],
                r"has dtype complex128; expected real"),
    "Python objects": (lambda d: [npy(d, "w.npy", W_OK), npy(d, "x.npy", np.array(
        [[1, None]] * 3, dtype=object))], r"x\.npy holds Python objects \(dtype object\)"),
    "booleans": (lambda d: [npy(d, "w.npy", W_OK > 0), npy(d, "x.npy", X_OK)],
                 r"has dtype bool; expected real"),
    "dates": (lambda d: [npy(d, "w.npy", np.zeros((4, 3), "datetime64[s]")),
                         npy(d, "x.npy", X_OK)], r"has dtype datetime64\[s\]"),
    "empty file": (lambda d: [damaged(d, "w.npy", b""), npy(d, "x.npy", X_OK)],
                   r"w\.npy is not a valid \.npy file: EOF: reading magic string"),
    "truncated .npy": (lambda d: [npy(d, "w.npy", W_OK), damaged(
        d, "x.npy", Path(npy(d, "full.npy", np.ones((300, 2)))).read_bytes()[:1000])],
        r"x\.npy is truncated: its header announces shape \(300, 2\) of float64, 4928 bytes"
        r" in all, but the file has 1000"),
    "text, not .npy": (lambda d: [damaged(d, "w.npy", b"1 2 3\n4 5 6\n"), npy(d, "x.npy", X_OK)],
                       r"w\.npy is not a valid \.npy file: the magic string is not correct"),
    "garbled header": (lambda d: [damaged(d, "w.npy", b"\x93NUMPY\x01\x00\x20\x00{'descr': ?"),
                                  npy(d, "x.npy", X_OK)], r"w\.npy is not a valid \.npy file"),
    "directory, not zarr": (lambda d: [str(d), npy(d, "x.npy", X_OK)],
                            r"operand W: cannot read .* as a \.npy file or zarr array"),
    "missing file": (lambda d: [str(d / "nope.npy"), npy(d, "x.npy", X_OK)],
                     r"operand W: file .*nope\.npy does not exist"),
}


@pytest.mark.parametrize("case", OPERAND_CASES, ids=list(OPERAND_CASES))
def test_bad_operand_files_are_refused_naming_the_problem(capsys, isolated, case):
    make, problem = OPERAND_CASES[case]
    (isolated / "in").mkdir()
    err = refused(capsys, isolated, "run", "matmul", "--operands", *make(isolated / "in"))
    assert re.search(problem, err), err


OPTION_CASES = {
    "partition not decreasing": (["--partition", "4", "4", "0"],
                                 r"strictly decreasing, but p_0=4 <= p_1=4 in \(4, 4, 0\)"),
    "partition increasing": (["--partition", "-2", "3"], r"but p_0=-2 <= p_1=3"),
    "partition of one point": (["--partition", "8"], r"at least two points .* got \(8,\)"),
    "synthetic values out of range": (["--partition", "4", "0"],
                                      r"synthetic operands reach \|value\| = 128, out of range"
                                      r" for partition \(4, 0\)"),
    "bits of zero": (["--bits", "0", "4"], r"bits must be .* integers >= 1, got \(0, 4\)"),
    "too many bits": (["--bits", "40", "40"], r"spans 80 bits; at most 62"),
    "zero rows": (["--shape", "0", "4", "4"], r"shape must be three positive integers"),
    "negative seed": (["--seed", "-1"], r"seed must be an integer >= 0, got -1"),
    "zero block rows": (["--block-rows", "0"], r"block_rows must be a positive integer, got 0"),
    "negative deadline": (["--deadline", "-5"], r"deadline must be a finite number .* got -5"),
    "NaN deadline": (["--deadline", "nan"], r"deadline must be a finite number .* got nan"),
    "negative tolerance": (["--tolerance", "-1"], r"tolerance must be a number >= 0"),
    "NaN tolerance": (["--tolerance", "nan"], r"tolerance must be a number >= 0 .* got nan"),
    "run id with a slash": (["--run-id", "../elsewhere"], r"invalid run id '\.\./elsewhere'"),
    "larger than the disk": (["--shape", "200000000", "200000", "10"],
                             r"--shape 200000000 200000 10: the run writes about [\d.]+ GiB"
                             r" to .* \(operands [\d.]+ GiB, results"
                             r" [\d.]+ GiB\), and .* has [\d.]+ GiB free"),
}


@pytest.mark.parametrize("case", OPTION_CASES, ids=list(OPTION_CASES))
def test_bad_options_are_refused_naming_the_problem(capsys, isolated, case):
    options, problem = OPTION_CASES[case]
    err = refused(capsys, isolated, "run", "matmul", "--shape", "8", "6", "4", *options)
    assert re.search(problem, err), err


STREAM_CASES = {
    "negative deadline": (["--simulate", "--deadlines", "10", "-3"],
                          r"--deadlines: every deadline must be a finite number >= 0 \(slots\),"
                          r" got -3"),
    "infinite deadline": (["--simulate", "--deadlines", "inf"], r"--deadlines: .* got inf"),
    "no jobs": (["--simulate", "--jobs", "0"], r"--jobs: must be an integer >= 1, got 0"),
    "zero rate": (["--simulate", "--rate", "0"], r"--rate: must be a finite number > 0, got 0"),
    "negative gamma": (["--gamma", "-1"], r"--gamma: must be a finite number >= 0, got -1"),
    "zero time scale": (["--time-scale", "0"], r"--time-scale: must be a finite number > 0"),
    "slowdown of zero": (["--slowdown", "1=0"], r"--slowdown: must be a finite number > 0"),
    "no workers": (["--n-workers", "0"], r"--n-workers: must be an integer >= 1, got 0"),
    "missing data": (["--data-dir", "nowhere/at/all"], r"--data-dir: nowhere/at/all is not a"),
}


@pytest.mark.parametrize("case", STREAM_CASES, ids=list(STREAM_CASES))
def test_bad_stream_options_are_refused_before_anything_starts(capsys, isolated, case):
    options, problem = STREAM_CASES[case]
    err = refused(capsys, isolated, "run", "stream", *options)
    assert re.search(problem, err), err


def test_a_store_that_is_a_file_is_refused(capsys, isolated):
    (isolated / "runs").write_text("not a directory")
    err = refused(capsys, isolated, "run", "matmul", "--shape", "8", "6", "4")
    assert f"the run store {isolated / 'runs'} exists but is not a directory" in err


def test_a_malformed_scheduler_address_is_refused(capsys, isolated):
    code = main(["run", "matmul", "--shape", "8", "6", "4", "--store", str(isolated / "runs"),
                 "--address", "no-port-here"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'no-port-here' is not a Dask scheduler address" in err
    assert not (isolated / "runs").exists() and not (isolated / "prefect-home").exists()


# ------------------------------------------------------------------ edited manifests
@pytest.fixture
def stored_run(isolated):
    """A run as the flow leaves it after resolution 1 (written with the store's API)."""
    store = RunStore(isolated / "runs")
    spec = resolve_matmul(MatmulRequest(shape=(8, 6, 4), seed=1), Settings())
    with store.open("r", kind="matmul", parameters=spec.parameters) as run:
        for name, value in (("W", np.ones((8, 6), np.int8)), ("X", np.ones((6, 4), np.int8))):
            run.save_array(f"operands/{name}.npy", value)
        run.record_prepared("operands", {"files": {"W": "operands/W.npy",
                                                   "X": "operands/X.npy"}})
        staged = {f"resolution-1/{name}.npy": run.stage_array(f"{name}-1", (8, 4), "<f8")
                  for name in ("estimate", "bound")}
        files = run.commit_arrays(staged)
        run.record_resolution({"resolution": 1, "bound": 8.0, "elapsed_s": 0.5, "files": files})
    return isolated / "runs" / "r"


def _set(path, value):
    """An edit setting ``manifest[path[0]][path[1]]... = value``."""
    def edit(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


MANIFEST_CASES = {
    "not JSON": ("{\"format\": 1, ", r"manifest .* is not valid JSON"),
    "a list, not an object": ("[1, 2, 3]", r"must hold a JSON object, got list"),
    "unknown format": (_set(["format"], 7), r"has format 7; this version reads 1"),
    "resolutions not a list": (_set(["resolutions"], "all"),
                               r"field 'resolutions' is missing or not a list"),
    "resolution number a string": (_set(["resolutions", 0, "resolution"], "1"),
                                   r"listed in order 1, 2, \.\.\.; entry 1 is"),
    "resolution number skipped": (_set(["resolutions", 0, "resolution"], 2),
                                  r"listed in order 1, 2, \.\.\.; entry 1 is"),
    "bound a string": (_set(["resolutions", 0, "bound"], "small"),
                       r"resolution 1 has bound = 'small', not a number"),
    "file missing": (_set(["resolutions", 0, "files", "estimate"], "resolution-9/estimate.npy"),
                     r"resolution 1 lists 'estimate': 'resolution-9/estimate\.npy' does not"
                     r" exist"),
    "file outside the run": (_set(["resolutions", 0, "files", "bound"], "../../etc/passwd"),
                             r"lists 'bound': '\.\./\.\./etc/passwd' points outside the run"),
    "files not a mapping": (_set(["resolutions", 0, "files"], ["estimate.npy"]),
                            r"resolution 1 lists files \['estimate\.npy'\], not a mapping"),
    "prepared file missing": (_set(["prepared", "operands", "files", "X"], "operands/Y.npy"),
                              r"prepared input 'operands' lists 'X': 'operands/Y\.npy' does not"
                              r" exist"),
    "shape a string": (_set(["parameters", "shape"], "big"),
                       r"parameters this version cannot use .*: shape = 'big'"),
    "kind unknown": (_set(["parameters", "kind"], "magic"), r"kind = 'magic'"),
    "bits not integers": (_set(["parameters", "bits"], [4.5, "4"]), r"bits = \[4\.5, '4'\]"),
}


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=list(MANIFEST_CASES))
def test_a_manifest_edited_into_nonsense_is_refused_before_anything_starts(
    capsys, stored_run, case
):
    edit, problem = MANIFEST_CASES[case]
    path = stored_run / "manifest.json"
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))
    err = refused(capsys, stored_run.parent.parent, "run", "matmul", "--run-id", "r")
    assert re.search(problem, err), err


def test_a_truncated_result_file_is_refused_naming_it(capsys, stored_run):
    estimate = stored_run / "resolution-1" / "estimate.npy"
    estimate.write_bytes(estimate.read_bytes()[:200])
    err = refused(capsys, stored_run.parent.parent, "run", "matmul", "--run-id", "r")
    assert "resolution 1 lists 'estimate': 'resolution-1/estimate.npy' is damaged" in err
    assert "is truncated: its header announces shape (8, 4) of float64" in err


# ----------------------------------------------------------------------- the library
LIBRARY_CASES = {
    "NaN": (lambda: (np.array([[1.0, np.nan]]), np.ones((2, 2))), ValueError,
            r"W\[0, 1\] = nan is not finite"),
    "inf": (lambda: (np.ones((2, 2)), np.array([[1.0], [np.inf]])), ValueError,
            r"X\[1, 0\] = inf is not finite"),
    "out of range": (lambda: (np.full((2, 2), 256.0), np.ones((2, 2))), PartitionRangeError,
                     r"W\[0, 0\] = 256.0 is out of range for partition \(8, 4, 0\)"),
    "shapes mismatch": (lambda: (np.ones((2, 3)), np.ones((2, 2))), ValueError,
                        r"W's columns \(3\) must equal X's rows \(2\)"),
    "empty": (lambda: (np.ones((0, 2)), np.ones((2, 2))), ValueError, r"W is empty"),
    "strings": (lambda: (np.array([["1", "2"]]), np.ones((2, 2))), TypeError,
                r"W must be a numeric array, got dtype <U1"),
    "complex": (lambda: (np.ones((2, 2)), np.ones((2, 2)) * 1j), TypeError,
                r"X must be real, got dtype complex128"),
    "objects": (lambda: (np.array([[1, None]], dtype=object), np.ones((2, 2))), TypeError,
                r"W must be a numeric array, got dtype object"),
}


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=list(LIBRARY_CASES))
def test_layered_matmul_refuses_bad_operands_naming_the_problem(case):
    make, error, problem = LIBRARY_CASES[case]
    W, X = make()
    with pytest.raises(error, match=problem):
        list(layered_matmul(W, X, Partition((8, 4, 0)), Partition((8, 4, 0))))


@pytest.mark.parametrize(("points", "problem"), [
    ((4, 4, 0), r"strictly decreasing, but p_0=4 <= p_1=4"),
    ((0, 2, 1), r"strictly decreasing, but p_0=0 <= p_1=2"),
    ((8,), r"at least two points"),
    ((8.5, 0), r"must be integers, got 8.5"),
])
def test_a_partition_vector_that_is_not_strictly_decreasing_integers_is_refused(points, problem):
    with pytest.raises(ValueError, match=problem):
        Partition(points)


# ---------------------------------------------------------------- MNIST (IDX) inputs
def mnist_like_dir(directory, n=20):
    """A small data set in MNIST's format: both splits, images and labels, gzipped."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    for split in ("train", "t10k"):
        write_idx(directory / f"{split}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n, dtype=np.uint8))
    return directory


def _regzip(path, edit):
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


def _flip_gzip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


IDX_CASES = {
    "truncated payload": (lambda p: _regzip(p, lambda raw: raw[:-100]),
                          r"truncated payload: dimensions \(20, 28, 28\) of uint8 need 15680"
                          r" bytes, found 15580"),
    "trailing data": (lambda p: _regzip(p, lambda raw: raw + b"extra"), r"trailing data"),
    "bad magic": (lambda p: _regzip(p, lambda raw: b"\x01\x02" + raw[2:]),
                  r"bad IDX magic number 0102"),
    "unknown dtype code": (lambda p: _regzip(p, lambda raw: raw[:2] + b"\x42" + raw[3:]),
                           r"unknown IDX dtype code 0x42"),
    "corrupt gzip bytes": (_flip_gzip_byte, r"corrupt gzip stream"),
    "gzip cut short": (lambda p: p.write_bytes(p.read_bytes()[:300]), r"corrupt gzip stream"),
}


@pytest.mark.parametrize("case", IDX_CASES, ids=list(IDX_CASES))
def test_corrupt_idx_files_are_refused_by_the_library_and_the_command(
    capsys, isolated, case
):
    corrupt, problem = IDX_CASES[case]
    data = mnist_like_dir(isolated / "data")
    corrupt(data / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(IdxFormatError, match=problem) as caught:
        load_mnist(data, split="test")
    assert "t10k-images-idx3-ubyte.gz" in str(caught.value)
    err = refused(capsys, isolated, "run", "mnist", "--data-dir", str(data))
    assert re.search(problem, err) and "t10k-images-idx3-ubyte.gz" in err, err


@pytest.fixture
def http_directory():
    """``http_directory(dir)``: the URL of a loopback HTTP server serving ``dir``."""
    servers = []

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

    def serve(directory):
        server = ThreadingHTTPServer(("127.0.0.1", 0),
                                     functools.partial(Quiet, directory=str(directory)))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_download_failing_its_checksum_is_refused_and_never_cached(
    capsys, isolated, http_directory, monkeypatch
):
    """A mirror serving a cut-short test-images file: the command names the file and both
    digests, and the cache holds only files that verified."""
    served = isolated / "served"
    shutil.copytree(SHARED_MNIST_DIR, served, ignore=shutil.ignore_patterns("*.md"))
    cut = served / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    monkeypatch.setenv("LAYERED_MNIST_MIRRORS", http_directory(served))
    monkeypatch.chdir(isolated)  # no ./mnist directory may stand in for the name
    err = refused(capsys, isolated, "run", "mnist", "--data-dir", "mnist")
    assert "checksum mismatch for t10k-images-idx3-ubyte.gz from http://127.0.0.1:" in err
    assert "md5 9fb629c4189551a2d022fa330f9573f3" in err  # the official file's
    cache = isolated / "cache" / "mnist"
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in cache.iterdir()}
    assert not list(cache.glob(".*"))  # no partial download left behind
