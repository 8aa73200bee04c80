"""The train flow on a LocalCluster: a saved model the mnist flow then uses; bad input."""

import json
import re

import numpy as np
import pytest

from layered.cli import main
from layered.data import even_odd_labels, load_mnist, load_model, pixels_to_unit
from layered.layering import Network
from layered.mnist_request import default_model_path, file_sha256
from layered.settings import Settings

SUMMARY_KEYS = {"run_id", "status", "task", "path", "test_accuracy", "train_accuracy",
                "training_seconds", "train_samples"}


@pytest.fixture(scope="module")
def runner(local_cluster_address):
    from layered.cluster import dask_task_runner

    return dask_task_runner(Settings.from_env(), local_cluster_address)


def test_trained_model_is_saved_where_the_mnist_flow_finds_it(
    runner, shared_mnist_dir, tmp_path, task_run_states
):
    from layered.flows.mnist import mnist_flow
    from layered.flows.train import train_flow

    store = tmp_path / "runs"
    train = train_flow.with_options(task_runner=runner)
    state = train(data_dir=str(shared_mnist_dir), task="even-odd", samples=1000, epochs=1,
                  store=str(store), run_id="t", return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert set(summary) == SUMMARY_KEYS and summary["status"] == "Completed"
    path = default_model_path(store, "even-odd")
    assert summary["path"] == str(path) and summary["train_samples"] == 1000
    model = load_model(path)
    assert model.layer_sizes == (784, 20, 20, 1) and model.metadata["recipe"]["epochs"] == 1
    images, labels = load_mnist(shared_mnist_dir, "test")
    net = Network(**model.to_network_kwargs())
    predicted = (net.logits(pixels_to_unit(images)) >= 0).astype(int)
    accuracy = float(np.mean(predicted == even_odd_labels(labels)))
    assert summary["test_accuracy"] == pytest.approx(accuracy, abs=1.5 / len(labels))

    saved = path.stat().st_mtime_ns
    again = train(data_dir=str(shared_mnist_dir), task="even-odd", samples=1000, epochs=1,
                  store=str(store), run_id="t", return_state=True)
    assert again.is_completed() and again.result() == summary
    assert path.stat().st_mtime_ns == saved  # the run id's model was there: not retrained
    names = task_run_states(again.state_details.flow_run_id)
    assert not any(name.startswith("train") for name in names)

    mnist = mnist_flow.with_options(task_runner=runner)
    state = mnist(data_dir=str(shared_mnist_dir), samples=300, chunk_size=300, store=str(store),
                  run_id="m", return_state=True)
    assert state.is_completed(), state.message
    manifest = json.loads((store / "m" / "manifest.json").read_text())
    assert manifest["parameters"]["model"] == {"path": str(path), "sha256": file_sha256(path)}
    assert manifest["prepared"]["model"]["trained_for_run"] is False
    assert file_sha256(store / "m" / "model.npz") == file_sha256(path)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (lambda d: ["--data-dir", str(d / "nowhere")], r"'.*nowhere' is neither an existing"),
        (lambda d: ["--samples", "0"], "samples must be between 1 and 24345"),
        (lambda d: ["--epochs", "0"], "epochs must be a positive integer, got 0"),
        (lambda d: ["--out", str(d)], "is a directory; give the model file's path"),
    ],
    ids=["missing-data-dir", "samples", "epochs", "out-is-a-directory"],
)
def test_bad_training_input_is_refused_before_anything_starts(
    capsys, tmp_path, monkeypatch, shared_mnist_dir, extra, problem
):
    monkeypatch.setenv("LAYERED_PREFECT_HOME", str(tmp_path / "prefect-home"))
    code = main(["run", "train", "--data-dir", str(shared_mnist_dir), "--store",
                 str(tmp_path / "runs"), *extra(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(problem, err), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "prefect-home").exists()
