"""What the fault tests read back: persisted runs, the store's files, Prefect's records.

Persisted estimates are compared with :func:`layered_matmul` called directly on the same
operands, never with another output of the pipeline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layered.layering import Network, Partition, layered_inference, layered_matmul


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` every 20 ms until it is truthy; its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def read_manifest(store: Path, run_id: str) -> dict:
    return json.loads((Path(store) / run_id / "manifest.json").read_text())


def persisted_resolutions(store: Path, run_id: str) -> int:
    """How many resolutions the run's manifest lists (0 while it has no manifest)."""
    try:
        return len(read_manifest(store, run_id)["resolutions"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def run_partitions(params: dict, W, X) -> tuple[Partition, Partition]:
    """The partitions a matmul run used, from its manifest's parameters and its operands."""
    if params.get("scaled"):
        bits = tuple(params["bits"])
        return Partition.auto(W, bits, axis=1), Partition.auto(X, bits, axis=0)
    return Partition(params["partition_w"]), Partition(params["partition_x"])


def truncated_product(W, X, pw: Partition, px: Partition) -> np.ndarray:
    """``W_t @ X_t`` exactly: integers on each row's (column's) finest grid, sums below 2**53.

    Truncation toward zero is numpy's ``trunc`` here, not the library's splitting.
    """
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    gw = pw.points[-1] + (0 if pw.offsets is None else np.array(pw.offsets)[:, None])
    gx = px.points[-1] + (0 if px.offsets is None else np.array(px.offsets)[None, :])
    wq = np.trunc(np.ldexp(np.asarray(W, dtype=np.float64), -gw))
    xq = np.trunc(np.ldexp(X, -gx))
    assert np.abs(wq).max() * np.abs(xq).max() * W.shape[1] < 2**53
    return np.ldexp(wq @ xq, gw + gx)


def assert_matches_layered_matmul(store: Path, run_id: str, W, X) -> dict:
    """Every persisted estimate equals layered_matmul's, bit for bit. Returns the manifest."""
    manifest = read_manifest(store, run_id)
    params = manifest["parameters"]
    direct = layered_matmul(W, X, *run_partitions(params, W, X), ordering=params["ordering"])
    assert manifest["resolutions"], "no resolution persisted"
    for entry, res in zip(manifest["resolutions"], direct, strict=False):
        estimate = np.load(Path(store) / run_id / entry["files"]["estimate"])
        assert np.array_equal(estimate, res.estimate), f"resolution {res.resolution} differs"
    return manifest


def listed_files(manifest: dict) -> set[str]:
    """Every file a manifest lists: resolutions' and prepared inputs' ``files``, and the
    mnist run's prepared inputs (``.npy`` paths) and model (``file``)."""
    entries = [*manifest["resolutions"], *manifest["prepared"].values()]
    listed = {rel for entry in entries if isinstance(entry, dict)
              for rel in entry.get("files", {}).values()}
    inputs = manifest["prepared"].get("inputs", {})
    listed |= {rel for rel in inputs.values() if isinstance(rel, str) and rel.endswith(".npy")}
    if "file" in manifest["prepared"].get("model", {}):
        listed.add(manifest["prepared"]["model"]["file"])
    return listed


def visible_files(run_dir: Path) -> set[str]:
    """Files of a run with a final name: none of their path parts is hidden (``.xxx``)."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
            if p.is_file() and not any(part.startswith(".")
                                       for part in p.relative_to(run_dir).parts)}


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of everything under ``directory``."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*")}


def flow_run_state(flow_run_id) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state_name


def task_run_states(flow_run_id) -> dict[str, str]:
    """``{task run name: state name}`` of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run.state_name for run in runs}


def reference_results(model_path, images, rule):
    """The network saved at ``model_path`` and ``layered_inference`` of it on ``images``
    with the paper's partitions, as the mnist flow runs it."""
    from layered.data import load_model, pixels_to_unit
    from layered.reports.mnist import PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS

    net = Network(**load_model(model_path).to_network_kwargs())
    X = pixels_to_unit(images)
    return net, list(layered_inference(net, X, PAPER_INPUT_PARTITION, PAPER_WEIGHT_PARTITIONS,
                                       rule=rule, clip=True))


def assert_run_matches_layered_inference(store, run_id, direct):
    """Each persisted resolution equals layered_inference's. Returns the manifest."""
    run_dir = Path(store) / run_id
    manifest = read_manifest(store, run_id)
    assert manifest["resolutions"], "no resolution persisted"
    for entry, res in zip(manifest["resolutions"], direct, strict=False):
        for name in ("outputs", "logits", "active", "frozen_at"):
            saved = np.load(run_dir / entry["files"][name])
            assert np.array_equal(saved, getattr(res, name)), (name, res.resolution)
        assert entry["active_fraction"] == float(np.mean(res.active))
        assert entry["refined"] == res.n_active and entry["bit_ops"] == res.bit_ops
    return manifest
