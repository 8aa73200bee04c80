"""The run store: atomic writes, one writer per run, resumable manifests, clear refusals."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from layered.data.store import (
    MANIFEST,
    RunLockedError,
    RunMismatchError,
    RunStore,
    RunStoreError,
    atomic_save_npy,
    atomic_write_bytes,
    write_rows,
)

PARAMS = {"shape": [4, 3, 2], "seed": 1}


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_failed_array_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "x.npy"
    atomic_save_npy(target, np.arange(5.0))
    with pytest.raises(ValueError):  # object arrays cannot be saved without pickle
        atomic_save_npy(target, np.array([{"a": 1}], dtype=object))
    assert np.array_equal(np.load(target), np.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_new_run_writes_a_manifest_with_its_parameters(tmp_path):
    store = RunStore(tmp_path)
    with store.open("r1", kind="matmul", parameters={"shape": (4, 3, 2), "seed": 1}) as run:
        assert run.completed_resolutions() == []
    manifest = json.loads((tmp_path / "r1" / MANIFEST).read_text())
    assert manifest["parameters"] == PARAMS
    assert manifest["kind"] == "matmul" and manifest["resolutions"] == []


def test_committed_resolutions_are_listed_after_their_arrays_and_survive_reopening(tmp_path):
    store = RunStore(tmp_path)
    with store.open("r1", kind="matmul", parameters=PARAMS) as run:
        staged = run.stage_array("estimate-1", (4, 2), "<f8")
        filled = np.load(staged, mmap_mode="r+")
        filled[:] = 7.0
        filled.flush()
        del filled
        files = run.commit_arrays({"resolution-1/estimate.npy": staged})
        run.record_resolution({"resolution": 1, "bound": 3.0, "files": files})
    with store.open("r1", kind="matmul", parameters=PARAMS) as run:
        (entry,) = run.completed_resolutions()
    assert entry["files"] == {"estimate": "resolution-1/estimate.npy"}
    committed = np.load(tmp_path / "r1" / entry["files"]["estimate"])
    assert np.array_equal(committed, np.full((4, 2), 7.0))
    assert not any((tmp_path / "r1" / ".staging").iterdir())


def test_rows_written_by_concurrent_processes_are_whole_in_the_committed_file(tmp_path):
    store = RunStore(tmp_path)
    with store.open("r1", kind="matmul", parameters=PARAMS) as run:
        staged = run.stage_array("estimate-1", (6, 3), "<f8")
        code = textwrap.dedent(f"""
            import sys, numpy as np
            from layered.data.store import write_rows
            a = int(sys.argv[1])
            write_rows({staged!r}, (a, a + 2), np.full((2, 3), a + 0.5))
        """)
        writers = [subprocess.Popen([sys.executable, "-c", code, str(a)]) for a in (0, 2, 4)]
        assert [w.wait() for w in writers] == [0, 0, 0]
        write_rows(staged, (5, 6), np.zeros((1, 1)))  # broadcast, as an exact bound is
        files = run.commit_arrays({"resolution-1/estimate.npy": staged})
    committed = np.load(tmp_path / "r1" / files["estimate"])
    assert committed.tolist() == [[0.5] * 3] * 2 + [[2.5] * 3] * 2 + [[4.5] * 3, [0.0] * 3]


def test_rows_outside_a_staged_array_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"rows 3:5 are not rows of .*a\.npy \(shape \(4, 2\)"):
        write_rows(path, (3, 5), np.ones((2, 2)))
    with pytest.raises(ValueError):  # values that do not broadcast to the rows
        write_rows(path, (0, 2), np.ones((2, 3)))
    assert np.load(path).tolist() == [[0.0, 0.0]] * 4


def test_staged_arrays_of_a_crashed_run_are_discarded_on_reopening(tmp_path):
    store = RunStore(tmp_path)
    with store.open("r1", kind="matmul", parameters=PARAMS) as run:
        run.stage_array("estimate-1", (4, 2), "<f8")  # never committed: the run "crashed"
    with store.open("r1", kind="matmul", parameters=PARAMS) as run:
        assert run.completed_resolutions() == []
        assert list(run.staging.iterdir()) == []


def test_resolutions_are_recorded_in_order(tmp_path):
    with RunStore(tmp_path).open("r1", kind="matmul", parameters=PARAMS) as run:
        with pytest.raises(RunStoreError, match="recorded in order"):
            run.record_resolution({"resolution": 2})


def test_second_writer_in_another_process_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from layered.data.store import RunStore
            with RunStore({str(tmp_path)!r}).open("r1", kind="matmul", parameters={PARAMS!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"another process \(pid {holder.pid}"):
            with RunStore(tmp_path).open("r1", kind="matmul", parameters=PARAMS):
                pass
        with pytest.raises(RunLockedError):
            RunStore(tmp_path).check_resumable("r1", kind="matmul", parameters=PARAMS)
    finally:
        holder.communicate("done\n", timeout=30)
    with RunStore(tmp_path).open("r1", kind="matmul", parameters=PARAMS):  # free again
        pass


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    store = RunStore(tmp_path)
    with store.open("r1", kind="matmul", parameters=PARAMS):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            with store.open("r1", kind="matmul", parameters=PARAMS):
                pass


def test_resuming_with_other_parameters_is_refused_naming_the_difference(tmp_path):
    store = RunStore(tmp_path)
    with store.open("r1", kind="matmul", parameters=PARAMS):
        pass
    other = {"shape": [4, 3, 5], "seed": 1}
    with pytest.raises(RunMismatchError, match=r"shape: started with \[4, 3, 2\], now \[4, 3, 5\]"):
        with store.open("r1", kind="matmul", parameters=other):
            pass
    with pytest.raises(RunMismatchError, match="shape"):
        store.check_resumable("r1", kind="matmul", parameters=other)
    with pytest.raises(RunMismatchError, match="is a matmul run, not mnist"):
        with store.open("r1", kind="mnist", parameters=PARAMS):
            pass


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"format": 1, "kind": "matmul", "parameters": {}, "prepared": {},'
         ' "resolutions": [{"resolution": 2}]}', "listed in order"),
        ('{"format": 99}', "has format 99"),
    ],
)
def test_a_manifest_edited_into_nonsense_is_a_clear_error(tmp_path, text, problem):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / MANIFEST).write_text(text)
    with pytest.raises(RunStoreError, match=problem):
        RunStore(tmp_path).read_manifest("r1")


@pytest.mark.parametrize("run_id", ["", "../escape", "a/b", ".hidden", "x" * 200])
def test_run_ids_that_are_not_plain_names_are_refused(tmp_path, run_id):
    with pytest.raises(RunStoreError, match="invalid run id"):
        RunStore(tmp_path).run_dir(run_id)
