"""The mnist flow on a LocalCluster: identical to layered_inference, deadline, resume, bad input.

Every persisted resolution (outputs, logits, active samples, freezing resolutions) is
compared bit for bit with :func:`layered_inference` called directly on the same images,
and the summary's figures with accuracies and a full-resolution pass computed here.
"""

import json
import re
import shutil
import time

import numpy as np
import pytest
from runs import assert_run_matches_layered_inference, reference_results

from layered.cli import main
from layered.data import load_mnist, pixels_to_unit, save_model, train_model
from layered.data.models import TrainingRecipe
from layered.data.store import RunStore
from layered.mnist_request import MnistRequest, default_model_path, resolve_mnist
from layered.reports.mnist import PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS
from layered.settings import Settings
from layered.tasks.mnist import decide

SAMPLES, CHUNK = 2000, 600  # four chunks, the last one short
SUMMARY_KEYS = {"run_id", "status", "store", "resolutions", "final"}
RESOLUTION_KEYS = {"resolution", "elapsed_s", "active_fraction", "accuracy"}


@pytest.fixture(scope="module")
def test_split(shared_mnist_dir):
    images, labels = load_mnist(shared_mnist_dir, "test")
    return images[:SAMPLES], labels[:SAMPLES]


@pytest.fixture(scope="module")
def small_model(shared_mnist_dir, tmp_path_factory):
    """An even/odd model trained on 3,000 images for 2 epochs; its saved path."""
    images, labels = load_mnist(shared_mnist_dir, "train")
    recipe = TrainingRecipe(hidden_sizes=(20, 20), learning_rate=1e-2, epochs=2)
    model = train_model(images[:3000], labels[:3000], task="even-odd", recipe=recipe)
    path = tmp_path_factory.mktemp("model") / "even-odd.npz"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def run_mnist(local_cluster_address, shared_mnist_dir, small_model):
    """``run_mnist(store, **parameters)``: the mnist flow on the LocalCluster; its state."""
    from layered.cluster import dask_task_runner
    from layered.flows.mnist import mnist_flow

    flow = mnist_flow.with_options(task_runner=dask_task_runner(Settings.from_env(),
                                                                local_cluster_address))

    def run(store, **parameters):
        defaults = {"data_dir": str(shared_mnist_dir), "model": str(small_model),
                    "samples": SAMPLES, "chunk_size": CHUNK}
        return flow(store=str(store), **{**defaults, **parameters}, return_state=True)

    return run


def full_resolution_classes(net, images):
    """Even (1) or odd (0) from a plain float64 pass of the network truncated to all bits."""
    h = PAPER_INPUT_PARTITION.truncate(pixels_to_unit(images), clip=True)
    for layer, (w, b, p) in enumerate(zip(net.weights, net.biases, PAPER_WEIGHT_PARTITIONS,
                                          strict=True)):
        z = h @ p.truncate(w, clip=True).T + p.truncate(b, clip=True)
        h = np.maximum(z, 0.0) if layer < 2 else z
    return (h[:, 0] >= 0).astype(int)


# ------------------------------------------------------------------------ pure pieces
def test_decide_stops_at_the_last_resolution_when_nobody_is_active_or_at_the_deadline():
    assert decide.fn(4, 4, active=10, deadline=None) == "completed"
    assert decide.fn(2, 4, active=0, deadline=None) == "decided"
    assert decide.fn(2, 4, active=3, deadline=10.0, now=10.0) == "deadline"
    assert decide.fn(2, 4, active=3, deadline=10.0, now=9.9) is None


def test_a_missing_model_is_trained_first_and_a_resume_keeps_the_runs_values(
    shared_mnist_dir, tmp_path
):
    settings = Settings(store=tmp_path / "runs")
    spec = resolve_mnist(MnistRequest(data_dir=str(shared_mnist_dir), task="digits"), settings)
    assert spec.trains and spec.rule == "margin"  # gray zone needs a sigmoid output
    assert spec.model_path == default_model_path(tmp_path / "runs", "digits")
    assert len(spec.targets) == 10_000 and set(np.unique(spec.targets)) == set(range(10))
    stored = {**spec.parameters, "rule": "certified", "samples": 300}
    resumed = resolve_mnist(MnistRequest(), settings, stored)
    assert (resumed.task, resumed.rule, len(resumed.targets)) == ("digits", "certified", 300)
    assert resumed.parameters == stored


# ------------------------------------------------------------------------------ flows
@pytest.fixture(scope="module")
def gray_zone_run(run_mnist, tmp_path_factory):
    """A complete gray-zone run (a template: tests copy it)."""
    store = tmp_path_factory.mktemp("gray") / "runs"
    state = run_mnist(store, rule="gray-zone", run_id="gray")
    return store, state


def test_flow_on_a_local_cluster_equals_layered_inference(
    gray_zone_run, small_model, test_split, latest_artifacts, task_run_states
):
    store, state = gray_zone_run
    assert state.is_completed(), state.message
    summary = state.result()
    assert set(summary) == SUMMARY_KEYS and summary["status"] == "Completed"
    assert [set(r) for r in summary["resolutions"]] == [RESOLUTION_KEYS] * 4
    net, direct = reference_results(small_model, test_split[0], "gray-zone")
    manifest = assert_run_matches_layered_inference(store, "gray", direct)
    assert manifest["prepared"]["inputs"]["weight_partitions"] == [
        list(p.points) for p in PAPER_WEIGHT_PARTITIONS]
    even = (test_split[1] % 2 == 0).astype(int)
    final = (direct[-1].outputs >= 0.5).astype(int)
    assert summary["final"]["accuracy"] == pytest.approx(np.mean(final == even), abs=1e-12)
    full = full_resolution_classes(net, test_split[0])
    assert summary["final"]["agreement_with_full"] == pytest.approx(np.mean(final == full))
    plot = store / "gray" / "plots" / "accuracy_active_by_resolution.svg"
    assert plot.read_bytes().startswith(b"<?xml")
    table, progress, markdown = latest_artifacts(["mnist-gray", "mnist-gray-progress",
                                                   "mnist-gray-summary"])
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["resolution"] for row in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"resolution", "elapsed_s", "active_fraction", "accuracy", "bit_ops"}
    assert progress.data == 100.0
    assert plot.resolve().as_uri() in markdown.data
    names = set(task_run_states(state.state_details.flow_run_id))
    assert {f"resolution-{r}" for r in range(1, 5)} <= names


def test_certified_stops_agree_with_the_full_resolution_answers(
    run_mnist, small_model, test_split, tmp_path
):
    state = run_mnist(tmp_path / "runs", rule="certified", run_id="cert")
    assert state.is_completed(), state.message
    assert state.result()["final"]["agreement_with_full"] == 1.0
    _, direct = reference_results(small_model, test_split[0], "certified")
    assert_run_matches_layered_inference(tmp_path / "runs", "cert", direct)


def _interrupted_copy(template, tmp_path, kept):
    """The template run as if its process died after persisting ``kept`` resolutions."""
    store = tmp_path / "runs"
    shutil.copytree(template, store)
    manifest_path = store / "gray" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["resolutions"] = manifest["resolutions"][:kept]
    for key in ("status", "stopped_reason", "finished_at"):
        manifest.pop(key, None)
    manifest_path.write_text(json.dumps(manifest))
    for r in range(kept + 1, 5):
        shutil.rmtree(store / "gray" / f"resolution-{r}")
    return store


def test_deadline_stops_the_batch_cancelled_keeping_its_answers(
    gray_zone_run, run_mnist, small_model, test_split, tmp_path, task_run_states
):
    store = _interrupted_copy(gray_zone_run[0], tmp_path, kept=2)
    state = run_mnist(store, run_id="gray", deadline=0.0)
    assert state.is_cancelled()
    assert "kept resolution 2" in state.message
    _, direct = reference_results(small_model, test_split[0], "gray-zone")
    manifest = assert_run_matches_layered_inference(store, "gray", direct)
    assert manifest["status"] == "Cancelled" and manifest["stopped_reason"] == "deadline"
    assert [r["resolution"] for r in manifest["resolutions"]] == [1, 2]
    assert not (store / "gray" / "resolution-3").exists()  # nothing half-written visible
    assert task_run_states(state.state_details.flow_run_id)["resolution-3"] == "Cancelled"


def test_resume_computes_only_the_resolutions_not_persisted(
    gray_zone_run, run_mnist, small_model, test_split, tmp_path, task_run_states
):
    store = _interrupted_copy(gray_zone_run[0], tmp_path, kept=2)
    kept = [store / "gray" / f"resolution-{r}" / "outputs.npy" for r in (1, 2)]
    before = [path.stat().st_mtime_ns for path in kept]
    state = run_mnist(store, run_id="gray")
    assert state.is_completed(), state.message
    _, direct = reference_results(small_model, test_split[0], "gray-zone")
    manifest = assert_run_matches_layered_inference(store, "gray", direct)
    assert [r["resolution"] for r in manifest["resolutions"]] == [1, 2, 3, 4]
    assert [path.stat().st_mtime_ns for path in kept] == before
    names = set(task_run_states(state.state_details.flow_run_id))
    assert {n for n in names if n.startswith("resolution")} == {"resolution-3", "resolution-4"}


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A store and a Prefect home of this test only (neither exists yet)."""
    monkeypatch.setenv("LAYERED_PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path


def _corrupt_model(directory):
    path = directory / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    return ["--model", str(path)]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (lambda d: ["--data-dir", str(d / "nowhere")], r"'.*nowhere' is neither an existing"),
        (_corrupt_model, r"corrupt\.npz: not a readable \.npz model file"),
        (lambda d: ["--model", str(d / "missing.npz")], r"missing\.npz does not exist"),
        (lambda d: ["--task", "digits", "--rule", "gray-zone"], "needs a sigmoid output"),
        (lambda d: ["--samples", "0"], "samples must be between 1 and 10000"),
        (lambda d: ["--deadline", "-1"], "deadline must be a finite number of seconds >= 0"),
    ],
    ids=["missing-data-dir", "corrupt-model", "missing-model", "rule-for-task", "samples",
         "deadline"],
)
def test_bad_mnist_input_is_refused_before_anything_starts(
    capsys, isolated, shared_mnist_dir, extra, problem
):
    t0 = time.perf_counter()
    code = main(["run", "mnist", "--data-dir", str(shared_mnist_dir), "--store",
                 str(isolated / "runs"), *extra(isolated)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(problem, err), err
    assert time.perf_counter() - t0 < 5
    assert not (isolated / "runs").exists() and not (isolated / "prefect-home").exists()


def test_a_model_of_the_other_task_is_refused(capsys, isolated, shared_mnist_dir, small_model):
    code = main(["run", "mnist", "--data-dir", str(shared_mnist_dir), "--task", "digits",
                 "--model", str(small_model), "--store", str(isolated / "runs")])
    assert code == 2
    assert "task 'digits' needs 784 inputs and a softmax output of 10" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--task", "letters"], ["--rule", "hunch"]])
def test_unknown_task_or_rule_is_a_usage_error(capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "mnist", *option])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_resuming_with_another_rule_is_refused(capsys, isolated, shared_mnist_dir, small_model):
    store = isolated / "runs"
    spec = resolve_mnist(MnistRequest(data_dir=str(shared_mnist_dir), model=str(small_model)),
                         Settings(store=store))
    with RunStore(store).open("r", kind="mnist", parameters=spec.parameters):
        pass
    code = main(["run", "mnist", "--rule", "certified", "--store", str(store), "--run-id", "r"])
    assert code == 2
    assert "rule: started with 'gray-zone', now 'certified'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["layered.mnist_request", "layered.tasks.mnist"])
def test_docstring_examples_of_the_mnist_pipeline_modules(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module}"
