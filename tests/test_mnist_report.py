"""The MNIST experiment report: JSON and plots, honest against one-shot references."""

import json

import numpy as np
import pytest

from layered.data import RECIPES, load_mnist, pixels_to_unit, save_model, train_model
from layered.layering import Network
from layered.reports.mnist import PAPER_INPUT_PARTITION, run_mnist_report


@pytest.fixture(scope="module")
def small_models(tmp_path_factory, shared_mnist_dir):
    images, labels = load_mnist(shared_mnist_dir, "train")
    out = tmp_path_factory.mktemp("models")
    paths = []
    for task in ("even-odd", "digits"):
        recipe = RECIPES[task].__class__(**{**RECIPES[task].__dict__, "epochs": 2})
        model = train_model(images[:3000], labels[:3000], task=task, recipe=recipe, seed=0)
        save_model(model, out / f"{task}.npz")
        paths.append(out / f"{task}.npz")
    return paths


def test_report_writes_json_and_plots_with_consistent_figures(tmp_path, shared_mnist_dir,
                                                               small_models):
    report = run_mnist_report(shared_mnist_dir, tmp_path, models=small_models, samples=400)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["test_samples"] == 400
    images, labels = load_mnist(shared_mnist_dir, "test")
    X, targets = pixels_to_unit(images[:400]), (labels[:400] % 2 == 0).astype(int)

    binary = report["even-odd"]
    for png in binary["plots"]:
        assert (tmp_path / png).stat().st_size > 10_000
    assert {"even-odd-resolutions.png", "even-odd-roc.png"} <= set(binary["plots"])
    # the one-shot 8-bit baseline is the plain float forward pass of the saved model
    from layered.data import load_model

    net = Network(**load_model(small_models[0]).to_network_kwargs())
    expected = np.mean((net.forward(X) >= 0.5).astype(int) == targets)
    assert binary["baselines"]["one_shot_8bit"]["accuracy"] == pytest.approx(expected)
    # with no rule every sample runs every resolution; the last equals the network on
    # inputs and weights truncated to all R components
    rows = binary["rules"]["none"]["resolutions"]
    assert [row["active_fraction"] for row in rows[:-1]] == [1.0] * (PAPER_INPUT_PARTITION.m - 1)
    # the certified rule never disagrees with the full-resolution answer
    for name in ("even-odd", "even-odd-2bit", "digits", "digits-2bit"):
        assert report[name]["rules"]["certified"]["agreement_with_full"] == 1.0
    # the gray-zone rule's active fraction never grows
    active = [row["active_fraction"] for row in binary["rules"]["gray-zone"]["resolutions"]]
    assert active == sorted(active, reverse=True)
    assert "| gray-zone | 2 |" in binary["table"]
