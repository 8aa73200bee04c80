"""The paper's MNIST experiment (METHOD §6), reproduced and extended, as JSON and PNG plots.

For the binary even/odd model (784→20→20→1, ReLU, sigmoid output, R = 4 one-bit
components, the partitions of METHOD §6; ``even-odd``) the report gives, per resolution, the
accuracy, ROC AUC and fraction of samples still active for

* every sample refined to every resolution (no rule),
* the paper's gray-zone rule [0.3, 0.6] (adaptive),
* the certified rule (no answer ever differs from the full-resolution one),

against the one-shot baselines: full-precision weights with 8-bit pixels and with 3-bit
pixels. The 10-class model (softmax; ``digits``, one-bit components with ``p_0`` from each
layer's range) gets the same with the margin and certified rules. Both are repeated with
two-bit components (``*-2bit``: 8-bit pixels after R = 4), where the certified rule's
worst case over the bits not yet added is narrow enough to stop samples early.

Usage::

    layered report mnist --data-dir ../shared/data/mnist --out reports/mnist
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layered.data import load_mnist, load_model, pixels_to_unit, train_model
from layered.data.models import TrainedModel
from layered.layering import Network, Partition, layered_inference

#: METHOD §6: one pixel bit per resolution, most significant first.
PAPER_INPUT_PARTITION = Partition((0, -1, -2, -3, -4))
#: METHOD §6: one-bit weight components per layer of the 784→20→20→1 network.
PAPER_WEIGHT_PARTITIONS = (
    Partition((-1, -2, -3, -4, -5)),
    Partition((0, -1, -2, -3, -4)),
    Partition((1, 0, -1, -2, -3)),
)
#: Two pixel bits per resolution (8-bit pixels after R = 4): where the certified rule
#: can stop samples early (ours, not the paper's).
TWO_BIT_INPUT_PARTITION = Partition((0, -2, -4, -6, -8))
#: One-shot baseline with 3-bit pixels.
THREE_BIT_PIXELS = Partition((0, -1, -2, -3))


@dataclass(frozen=True)
class Setup:
    """A model with the partitions its layered inference uses."""

    name: str
    network: Network
    input_partition: Partition
    weight_partitions: tuple[Partition, ...]
    rules: tuple[str, ...]


def layer_partitions(network: Network, bits: int, resolutions: int) -> tuple[Partition, ...]:
    """``bits``-bit components per layer, ``p_0`` chosen from the layer's weights and bias."""
    return tuple(
        Partition.auto(np.concatenate([w.ravel(), b]), bits=(bits,) * resolutions)
        for w, b in zip(network.weights, network.biases, strict=True)
    )


def predictions(output: str, outputs: np.ndarray) -> np.ndarray:
    """Predicted label: sigmoid ≥ 0.5 → 1, softmax → argmax."""
    if output == "sigmoid":
        return (np.ravel(outputs) >= 0.5).astype(int)
    return np.argmax(outputs, axis=1)


def scores(output: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Accuracy, and for a binary output the ROC AUC and curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    result: dict[str, Any] = {
        "accuracy": float(np.mean(predictions(output, outputs) == targets))
    }
    if output == "sigmoid":
        probs = np.ravel(outputs)
        result["auc"] = float(roc_auc_score(targets, probs))
        fpr, tpr, _ = roc_curve(targets, probs)
        keep = np.unique(np.linspace(0, len(fpr) - 1, 200).astype(int))
        result["roc"] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
    return result


def run_rule(setup: Setup, X: np.ndarray, targets: np.ndarray, rule: str | None) -> dict[str, Any]:
    """Layered inference under ``rule``: per-resolution scores, active fraction and cost."""
    rows = []
    per_resolution = []
    full = None
    started = time.perf_counter()
    for res in layered_inference(
        setup.network, X, setup.input_partition, setup.weight_partitions, rule=rule, clip=True
    ):
        row = {
            "resolution": res.resolution,
            "active_fraction": float(np.mean(res.active)),
            "refined": int(res.n_active),
            "bit_ops": int(res.bit_ops),
            "elapsed_s": round(time.perf_counter() - started, 4),
            **scores(setup.network.output, res.outputs, targets),
        }
        rows.append(row)
        per_resolution.append(res.outputs)
        full = res
    assert full is not None
    return {
        "rule": rule or "none",
        "resolutions": rows,
        "final": {k: v for k, v in rows[-1].items() if k != "roc"},
        "final_outputs": full.outputs,
        "outputs_per_resolution": per_resolution,
        "frozen_at": full.frozen_at,
        "stopped_before_last": float(np.mean(full.frozen_at < full.resolutions)),
    }


def one_shot_baselines(network: Network, X: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Full-precision weights with 8-bit pixels and with 3-bit pixels."""
    return {
        "one_shot_8bit": scores(network.output, network.forward(X), targets),
        "one_shot_3bit": scores(
            network.output, network.forward(THREE_BIT_PIXELS.truncate(X)), targets
        ),
    }


def evaluate(setup: Setup, X: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Every rule of ``setup`` plus the no-rule run and the one-shot baselines."""
    runs = {name: run_rule(setup, X, targets, None if name == "none" else name)
            for name in ("none", *setup.rules)}
    full_pred = predictions(setup.network.output, runs["none"]["final_outputs"])
    one_shot = setup.network.forward(X)
    errors = [np.abs(out - one_shot).ravel() for out in runs["none"]["outputs_per_resolution"]]
    report: dict[str, Any] = {
        "model": setup.name,
        "layer_sizes": list(setup.network.layer_sizes),
        "input_partition": list(setup.input_partition.points),
        "weight_partitions": [list(p.points) for p in setup.weight_partitions],
        "baselines": one_shot_baselines(setup.network, X, targets),
        "rules": {},
        # distributions behind the CDF plot (METHOD §6): not serialised
        "_cdf": {
            "output error vs one-shot": errors,
            "outputs": [np.ravel(runs["none"]["final_outputs"]), np.ravel(one_shot)],
            "weights": [w.ravel() for w in setup.network.weights],
        },
        "output_error_vs_one_shot": [
            {"resolution": r, "median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)),
             "max": float(e.max())}
            for r, e in enumerate(errors, start=1)
        ],
    }
    for name, run in runs.items():
        run.pop("outputs_per_resolution")
        pred = predictions(setup.network.output, run.pop("final_outputs"))
        run["agreement_with_full"] = float(np.mean(pred == full_pred))
        run["frozen_at_histogram"] = np.bincount(
            run.pop("frozen_at"), minlength=setup.input_partition.m + 1
        )[1:].tolist()
        report["rules"][name] = run
    return report


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Plots: accuracy and active fraction per resolution; CDFs of the output error against
    one-shot, of outputs and of weights; ROC curves (binary model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    name = report["model"]
    fig, (ax_acc, ax_act) = plt.subplots(1, 2, figsize=(11, 4))
    resolutions = [row["resolution"] for row in report["rules"]["none"]["resolutions"]]
    # distinct markers and dashes: rules that never stop early overlap the no-rule line
    styles = iter([("o", "-"), ("s", "--"), ("^", ":"), ("d", "-.")])
    for rule, run in report["rules"].items():
        marker, dash = next(styles)
        r = [row["resolution"] for row in run["resolutions"]]
        for ax, key in ((ax_acc, "accuracy"), (ax_act, "active_fraction")):
            ax.plot(r, [row[key] for row in run["resolutions"]], marker=marker, ls=dash,
                    label=rule, alpha=0.85)
    for label, style in (("one_shot_8bit", "--"), ("one_shot_3bit", ":")):
        ax_acc.axhline(report["baselines"][label]["accuracy"], ls=style, c="k",
                       label=label.replace("_", " "))
    ax_acc.set(xlabel="resolution", ylabel="accuracy", title=f"{name}: accuracy")
    ax_act.set(xlabel="resolution", ylabel="fraction of samples still active",
               title=f"{name}: active samples", ylim=(0, 1.05))
    for ax in (ax_acc, ax_act):
        ax.set_xticks(resolutions)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / f"{name}-resolutions.png"))

    cdf = report.pop("_cdf")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for r, err in enumerate(cdf["output error vs one-shot"], start=1):
        _plot_cdf(axes[0], err, f"resolution {r}")
    axes[0].set(xlabel="|output - one-shot output|",
                title=f"{name}: output error vs one-shot")
    for values, label in zip(cdf["outputs"], ("layered, last resolution", "one-shot 8-bit"),
                             strict=True):
        _plot_cdf(axes[1], values, label)
    axes[1].set(xlabel="output probability (all classes)", title=f"{name}: outputs")
    for layer, w in enumerate(cdf["weights"], start=1):
        _plot_cdf(axes[2], w, f"layer {layer} weights")
    axes[2].set(xlabel="weight", title=f"{name}: weights")
    for ax in axes:
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / f"{name}-cdfs.png"))

    none_rows = report["rules"]["none"]["resolutions"]
    if "roc" in none_rows[0]:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for row in none_rows:
            ax.plot(row["roc"]["fpr"], row["roc"]["tpr"],
                    label=f"resolution {row['resolution']} (AUC {row['auc']:.3f})")
        for rule in ("gray-zone", "certified"):
            if rule in report["rules"]:
                last = report["rules"][rule]["resolutions"][-1]
                ax.plot(last["roc"]["fpr"], last["roc"]["tpr"], "--",
                        label=f"adaptive {rule} (AUC {last['auc']:.3f})")
        for label in ("one_shot_8bit", "one_shot_3bit"):
            base = report["baselines"][label]
            ax.plot(base["roc"]["fpr"], base["roc"]["tpr"], ":",
                    label=f"{label.replace('_', ' ')} (AUC {base['auc']:.3f})")
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"{name}: ROC curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, out_dir / f"{name}-roc.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` as a PNG and close it; ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_cdf(ax: Any, values: np.ndarray, label: str) -> None:
    ordered = np.sort(values)
    ax.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=label)


def summary_table(report: dict[str, Any]) -> str:
    """A markdown table: per rule and resolution, accuracy, AUC and active fraction."""
    lines = ["| rule | resolution | accuracy | AUC | active after |", "|---|---|---|---|---|"]
    for rule, run in report["rules"].items():
        for row in run["resolutions"]:
            auc = f"{row['auc']:.4f}" if "auc" in row else "-"
            lines.append(f"| {rule} | {row['resolution']} | {row['accuracy']:.4f} | {auc} |"
                         f" {row['active_fraction']:.4f} |")
    for label, base in report["baselines"].items():
        auc = f"{base['auc']:.4f}" if "auc" in base else "-"
        lines.append(f"| {label.replace('_', ' ')} | - | {base['accuracy']:.4f} | {auc} | - |")
    return "\n".join(lines)


def _model(task: str, path: Path | None, train: tuple, test: tuple, source: str) -> TrainedModel:
    if path is not None and path.exists():
        return load_model(path)
    return train_model(*train, task=task, seed=0, test=test, data_source=source)


def run_mnist_report(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    models: Sequence[Path | None] = (None, None),
    samples: int | None = None,
) -> dict[str, Any]:
    """Run the experiment and write ``report.json`` and PNG plots into ``out_dir``.

    Parameters
    ----------
    data_dir : path
        An MNIST-format directory (both splits).
    out_dir : path
        Created if missing.
    models : (even-odd model path, digits model path)
        Saved models to use; a missing one is trained on the training split (seed 0).
    samples : int, optional
        Evaluate on the first ``samples`` test images only (default: all).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_mnist(data_dir, "train")
    test_images, test_labels = load_mnist(data_dir, "test")
    if samples is not None:
        test_images, test_labels = test_images[:samples], test_labels[:samples]
    X = pixels_to_unit(test_images)

    binary = _model("even-odd", models[0], train, (test_images, test_labels), str(data_dir))
    binary_net = Network(**binary.to_network_kwargs())
    digits = _model("digits", models[1], train, (test_images, test_labels), str(data_dir))
    digits_net = Network(**digits.to_network_kwargs())
    setups = [
        Setup("even-odd", binary_net, PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS,
              ("gray-zone", "certified")),
        Setup("even-odd-2bit", binary_net, TWO_BIT_INPUT_PARTITION,
              layer_partitions(binary_net, 2, 4), ("gray-zone", "certified")),
        Setup("digits", digits_net, PAPER_INPUT_PARTITION,
              layer_partitions(digits_net, 1, 4), ("margin", "certified")),
        Setup("digits-2bit", digits_net, TWO_BIT_INPUT_PARTITION,
              layer_partitions(digits_net, 2, 4), ("margin", "certified")),
    ]
    binary_targets = (test_labels % 2 == 0).astype(int)
    targets = {"even-odd": binary_targets, "even-odd-2bit": binary_targets,
               "digits": test_labels.astype(int), "digits-2bit": test_labels.astype(int)}
    reports = {}
    for setup in setups:
        report = evaluate(setup, X, targets[setup.name])
        trained = binary if setup.name.startswith("even-odd") else digits
        report["model_metadata"] = trained.metadata
        report["plots"] = [p.name for p in plot_report(report, out)]
        report["table"] = summary_table(report)
        reports[setup.name] = report
    payload = {"data_dir": str(data_dir), "test_samples": int(len(test_labels)), **reports}
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=_json_default))
    return payload


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
