"""Model training, export to (out, in) weights, and the .npz save/load round trip."""

import json
import zipfile

import numpy as np
import pytest

from layered.data import models
from layered.data.mnist import even_odd_labels, load_mnist, pixels_to_unit
from layered.data.models import (
    ModelFormatError,
    TrainedModel,
    TrainingRecipe,
    export_classifier,
    fit_classifier,
    load_model,
    save_model,
    train_model,
)

SMALL = 2000
QUICK = {
    "even-odd": TrainingRecipe((20, 20), 1e-2, epochs=3),
    "digits": TrainingRecipe((16,), 5e-2, epochs=3),
}


@pytest.fixture(scope="module")
def small_train(shared_mnist_dir):
    images, labels = load_mnist(shared_mnist_dir, "train")
    return images[:SMALL], labels[:SMALL]


def _reference_forward(weights, biases, output, x):
    """A plain numpy forward pass: ReLU hidden layers, then sigmoid or softmax."""
    a = x
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        a = np.maximum(w @ a.T + b[:, None], 0.0).T
    z = a @ weights[-1].T + biases[-1]
    if output == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z[:, 0]))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_binary_export_reproduces_sklearn_probabilities(small_train):
    images, labels = small_train
    x = pixels_to_unit(images)
    classifier = fit_classifier(x, even_odd_labels(labels), QUICK["even-odd"], seed=1)
    model = export_classifier(classifier)
    assert [w.shape for w in model.weights] == [(20, 784), (20, 20), (1, 20)]
    assert [b.shape for b in model.biases] == [(20,), (20,), (1,)]
    assert (model.hidden, model.output) == ("relu", "sigmoid")
    got = _reference_forward(model.weights, model.biases, model.output, x)
    np.testing.assert_allclose(got, classifier.predict_proba(x)[:, 1], rtol=0, atol=1e-10)


def test_ten_class_export_reproduces_sklearn_probabilities(small_train):
    images, labels = small_train
    x = pixels_to_unit(images)
    classifier = fit_classifier(x, labels, QUICK["digits"], seed=2)
    model = export_classifier(classifier)
    assert model.layer_sizes == (784, 16, 10)
    assert model.output == "softmax"
    got = _reference_forward(model.weights, model.biases, model.output, x)
    np.testing.assert_allclose(got, classifier.predict_proba(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("task", ["even-odd", "digits"])
def test_trained_model_round_trips_through_save_and_load(
    small_train, shared_mnist_dir, tmp_path, task
):
    images, labels = small_train
    test_images, test_labels = load_mnist(shared_mnist_dir, "test")
    model = train_model(
        images,
        labels,
        task=task,
        recipe=QUICK[task],
        seed=3,
        test=(test_images[:500], test_labels[:500]),
        data_source=str(shared_mnist_dir),
    )
    path = tmp_path / f"{task}.npz"
    save_model(model, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    loaded = load_model(path)
    for got, want in zip(loaded.weights + loaded.biases, model.weights + model.biases, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (loaded.hidden, loaded.output) == (model.hidden, model.output)
    assert loaded.metadata == json.loads(json.dumps(model.metadata))
    meta = loaded.metadata
    assert meta["task"] == task and meta["seed"] == 3 and meta["train_samples"] == SMALL
    assert meta["data_source"] == str(shared_mnist_dir)
    assert meta["hidden_sizes"] == list(QUICK[task].hidden_sizes)
    # The recorded accuracies agree with the exported weights on the data they name.
    targets = even_odd_labels(test_labels[:500]) if task == "even-odd" else test_labels[:500]
    probs = _reference_forward(
        loaded.weights, loaded.biases, loaded.output, pixels_to_unit(test_images[:500])
    )
    predicted = (probs > 0.5).astype(int) if loaded.output == "sigmoid" else probs.argmax(axis=1)
    assert meta["test_accuracy"] == pytest.approx(np.mean(predicted == targets))
    assert 0.5 < meta["train_accuracy"] <= 1.0


def test_network_kwargs_carry_the_arrays_and_activations():
    w = (np.ones((2, 3)), np.ones((1, 2)))
    b = (np.zeros(2), np.zeros(1))
    kwargs = TrainedModel(w, b, "relu", "sigmoid", {}).to_network_kwargs()
    assert set(kwargs) == {"weights", "biases", "hidden", "output"}
    assert [a.shape for a in kwargs["weights"]] == [(2, 3), (1, 2)]
    assert (kwargs["hidden"], kwargs["output"]) == ("relu", "sigmoid")


def test_model_arrays_are_read_only_copies():
    w = np.ones((1, 3))
    model = TrainedModel((w,), (np.zeros(1),), "relu", "sigmoid", {})
    w[0, 0] = 5.0
    assert model.weights[0][0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        model.weights[0][0, 0] = 2.0


@pytest.mark.parametrize(
    ("weights", "biases", "output", "message"),
    [
        (
            (np.ones((2, 3)), np.ones((1, 4))),
            (np.zeros(2), np.zeros(1)),
            "sigmoid",
            "layer 1 shapes do not chain",
        ),
        ((np.ones((2, 3)),), (np.zeros(3),), "softmax", "layer 0 shapes do not chain"),
        ((np.ones((2, 3)),), (np.zeros(2),), "sigmoid", "sigmoid output layer cannot have 2 units"),
        ((np.ones((1, 3)),), (np.zeros(1),), "softmax", "softmax output layer cannot have 1 units"),
        ((np.ones((1, 3)),), (np.zeros(1),), "tanh", "output must be one of"),
        ((np.full((1, 3), np.nan),), (np.zeros(1),), "sigmoid", "non-finite"),
        ((), (), "sigmoid", "at least one layer"),
    ],
)
def test_inconsistent_layers_are_rejected(weights, biases, output, message):
    with pytest.raises(ModelFormatError, match=message):
        TrainedModel(weights, biases, "relu", output, {})


@pytest.fixture
def saved(tmp_path):
    model = TrainedModel(
        (np.ones((2, 3)), np.ones((1, 2))),
        (np.zeros(2), np.zeros(1)),
        "relu",
        "sigmoid",
        {"task": "x"},
    )
    path = tmp_path / "model.npz"
    save_model(model, path)
    return path


def _rewrite(path, drop=(), **replace):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k not in drop}
    arrays.update(replace)
    np.savez(path, **arrays)


def _header(**changes):
    header = {
        "format_version": 1,
        "layers": 2,
        "hidden": "relu",
        "output": "sigmoid",
        "metadata": {},
    }
    header.update(changes)
    return np.array(json.dumps(header))


@pytest.mark.parametrize(
    ("drop", "replace", "message"),
    [
        (("b1",), {}, r"expected arrays .*'b1'"),
        ((), {"extra": np.zeros(1)}, r"found .*'extra'"),
        (("metadata_json",), {}, "no 'metadata_json' entry"),
        ((), {"metadata_json": np.array("{not json")}, "not valid JSON"),
        ((), {"metadata_json": _header(format_version=99)}, "format_version 99, expected 1"),
        ((), {"metadata_json": _header(layers=0)}, "'layers' must be a positive integer"),
        ((), {"W1": np.ones((1, 5))}, "layer 1 shapes do not chain"),
        ((), {"W0": np.array(["a", "b"])}, r"weights\[0\] is not numeric"),
    ],
)
def test_bad_model_files_give_clear_errors(saved, drop, replace, message):
    _rewrite(saved, drop=drop, **replace)
    with pytest.raises(ModelFormatError, match=f"model.npz.*{message}"):
        load_model(saved)


def test_not_an_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelFormatError, match="junk.npz: not a readable .npz"):
        load_model(path)
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(ModelFormatError, match="single array"):
        load_model(tmp_path / "single.npy")


def test_truncated_archive_is_a_clear_error(saved):
    saved.write_bytes(saved.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match="model.npz"):
        load_model(saved)


def test_missing_model_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.npz")


def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(saved, monkeypatch):
    before = saved.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(models.np, "savez", broken_savez)
    model = TrainedModel((np.ones((1, 3)),), (np.zeros(1),), "relu", "sigmoid", {})
    with pytest.raises(OSError, match="disk full"):
        save_model(model, saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_saved_file_is_one_npz_archive_with_json_metadata(saved):
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == [
            "W0.npy",
            "W1.npy",
            "b0.npy",
            "b1.npy",
            "metadata_json.npy",
        ]
    with np.load(saved) as archive:
        header = json.loads(str(archive["metadata_json"]))
    assert header["metadata"] == {"task": "x"} and header["output"] == "sigmoid"


def test_unknown_task_is_rejected(small_train):
    with pytest.raises(ValueError, match="task must be one of"):
        train_model(*small_train, task="parity")
