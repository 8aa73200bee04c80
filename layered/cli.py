"""The ``layered`` command: run pipelines, register deployments, keep a Prefect UI up.

Examples
--------
::

    layered run matmul                        # embedded default: synthetic 2048x2048x512
    layered run matmul --shape 4096 4096 256 --deadline 20 --json out.json
    layered run matmul --operands W.npy X.npy --tolerance 1e3 --address tcp://10.0.0.5:8786
    layered run matmul --run-id nightly-1     # resumes nightly-1 after its last resolution
    layered run train --data-dir ../shared/data/mnist --task even-odd
    layered run mnist --data-dir ../shared/data/mnist --rule certified --deadline 30
    layered report mnist --data-dir ../shared/data/mnist --out reports/mnist
    layered server start && layered ui        # a Prefect UI that outlives the runs
    layered deploy                            # nightly deployments on a process work pool

Exit status: 0 when a run ends with a result (completed, tolerance or deadline), 1 when it
fails, 2 on bad input (nothing is started then), 130 or 143 when interrupted by Ctrl-C or
SIGTERM (the run is marked Crashed; resume it with --run-id).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

from layered.flows import signals
from layered.settings import Settings, SettingsError

__all__ = ["main", "build_parser"]

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


# ------------------------------------------------------------------------------ parser
def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    """The argument parser; ``defaults`` (settings after environment variables) fill help."""
    parser = argparse.ArgumentParser(
        prog="layered",
        description="Computation in successive resolutions, orchestrated by Prefect on Dask.",
        epilog="Every default can also be set by an environment variable LAYERED_<NAME>"
        " (for example LAYERED_STORE, LAYERED_DASK_ADDRESS, LAYERED_SHAPE=2048,2048,512)."
        " Exit status: 0 a run ended with a result (completed, tolerance or deadline),"
        " 1 it failed, 2 bad input (nothing started), 130/143 interrupted by Ctrl-C/SIGTERM"
        " (the run is kept, marked Crashed; resume it with --run-id).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run a pipeline as a Prefect flow on Dask")
    pipelines = run.add_subparsers(dest="pipeline", required=True, metavar="PIPELINE")
    _add_matmul(pipelines, defaults)
    _add_mnist(pipelines, defaults)
    _add_train(pipelines, defaults)
    _add_stream(pipelines, defaults)
    _add_deploy(commands, defaults)
    _add_server(commands, defaults)
    _add_report(commands, defaults)
    return parser


def _kernel_options(p: argparse.ArgumentParser, defaults: Settings) -> None:
    p.add_argument("--kernel", choices=("auto", "numpy", "torch"), default="auto",
                   help="product kernel on the workers: auto (default) picks the fastest"
                   " exact one there, numpy for a run below LAYERED_TORCH_MIN_WORK"
                   f" ({defaults.torch_min_work:.3g}) multiply-adds, which would not repay"
                   " loading torch; torch needs the torch extra; results are identical")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="where products run (default: the kernel's choice)")


def _common(parser: argparse.ArgumentParser, defaults: Settings) -> None:
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="write the run summary as JSON to PATH")
    parser.add_argument("--address", metavar="tcp://HOST:PORT",
                        default=defaults.dask_address,
                        help="Dask scheduler to run on (default: a LocalCluster of"
                        f" {defaults.n_workers} process workers on 127.0.0.1, started for"
                        " the run); checked before anything starts")
    parser.add_argument("--store", type=Path, metavar="DIR", default=defaults.store,
                        help=f"where runs persist (default: {defaults.store})")
    parser.add_argument("--run-id", metavar="ID",
                        help="start the run under ID, or resume run ID after its last"
                        " persisted resolution; options not given take that run's values,"
                        " options given must match them (default: a new id)")


def _add_matmul(pipelines: Any, defaults: Settings) -> None:
    p = pipelines.add_parser(
        "matmul", help="a layered matrix product W @ X",
        description="A layered product W @ X: one Prefect task per resolution on Dask, each"
        " resolution's estimate and guaranteed bound persisted as it completes. With no"
        f" operands: seeded synthetic {defaults.value_bits}-bit integers of shape"
        f" {' x '.join(map(str, defaults.shape))} (M K N), split"
        f" {'+'.join(map(str, defaults.bits))} bits, ordering {defaults.ordering}.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--shape", type=int, nargs=3, metavar=("M", "K", "N"),
                        help="synthetic operands W (M x K) and X (K x N)"
                        f" (default {' '.join(map(str, defaults.shape))})")
    source.add_argument("--operands", nargs=2, metavar=("W", "X"),
                        help="operand files (.npy or zarr; X may be 1-D)")
    p.add_argument("--seed", type=int, help=f"seed of synthetic operands (default {defaults.seed})")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--bits", type=int, nargs="+", metavar="B",
                       help="magnitude bits per component, most significant first; the"
                       " partitions are chosen from the data"
                       f" (default {' '.join(map(str, defaults.bits))})")
    split.add_argument("--partition", type=int, nargs="+", metavar="P",
                       help="explicit partitioning vector p_0 > p_1 > ... > p_m for both"
                       " operands; values with |a| >= 2^p_0 are an error")
    p.add_argument("--ordering", choices=("anti-diagonal", "one-per-resolution", "shells"),
                   help=f"component products per resolution (default {defaults.ordering})")
    p.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="stop SECONDS after the flow starts, keeping the best resolution"
                   " (the run ends Cancelled)")
    p.add_argument("--tolerance", type=float, metavar="T",
                   help="stop once the guaranteed bound max|W X - estimate| is at most T")
    p.add_argument("--block-rows", type=int, metavar="N", default=defaults.block_rows,
                   help="rows of W per Dask block; a deadline is honoured within one"
                   f" block's time (default {defaults.block_rows})")
    _kernel_options(p, defaults)
    _common(p, defaults)
    p.set_defaults(handler=_run_matmul)


def _add_mnist(pipelines: Any, defaults: Settings) -> None:
    p = pipelines.add_parser(
        "mnist", help="layered batch inference of a trained network over MNIST",
        description="Batch inference over the MNIST test split in chunks, one Prefect task per"
        " resolution over the samples still active (R = 4, one pixel bit per resolution,"
        " the paper's partitions); after each resolution the rule freezes samples, which"
        " keep their outputs, and the batch stops at its deadline. Every resolution's"
        " outputs and states are persisted as it completes.",
    )
    p.add_argument("--data-dir", metavar="DIR",
                   help="MNIST-format directory, or 'mnist' to download the official files"
                   f" into the user cache (default {defaults.mnist_data})")
    p.add_argument("--task", choices=("even-odd", "digits"),
                   help=f"even/odd (the paper's binary model) or 10 digits (default"
                   f" {defaults.mnist_task})")
    p.add_argument("--rule", choices=("gray-zone", "margin", "certified"),
                   help="which samples stop being refined: gray zone [0.3, 0.6], top-2 margin"
                   " 0.05, or certified (only when no further bit can change the answer);"
                   " default gray-zone for even-odd, margin for digits")
    p.add_argument("--model", metavar="PATH",
                   help="model saved by `layered run train` (default: <store>/models/"
                   "<task>.npz, trained first if missing)")
    p.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="stop SECONDS after the flow starts; every sample keeps its latest"
                   " output (the run ends Cancelled)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="the first N test images (default all)")
    p.add_argument("--chunk-size", type=int, metavar="N",
                   help="samples per Dask block; a deadline is honoured within one chunk's"
                   f" time (default {defaults.chunk_size})")
    _kernel_options(p, defaults)
    _common(p, defaults)
    p.set_defaults(handler=_run_mnist)


def _add_train(pipelines: Any, defaults: Settings) -> None:
    p = pipelines.add_parser(
        "train", help="train and save the model the mnist pipeline uses",
        description="Train the even/odd (784-20-20-1, sigmoid) or the digits (784-64-10,"
        " softmax) model with scikit-learn on the MNIST training split, as a Prefect flow"
        " whose training task runs on Dask, and save it atomically with its metadata.",
    )
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"MNIST-format directory, or 'mnist' (default {defaults.mnist_data})")
    p.add_argument("--task", choices=("even-odd", "digits"),
                   help=f"which model (default {defaults.mnist_task})")
    p.add_argument("--out", metavar="PATH",
                   help="model file (default <store>/models/<task>.npz, where `layered run"
                   " mnist` looks)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="train on the first N training images (default all)")
    p.add_argument("--epochs", type=int, metavar="E", help="passes (default: the task's recipe)")
    _common(p, defaults)
    p.set_defaults(handler=_run_train)


def _add_report(commands: Any, defaults: Settings) -> None:
    p = commands.add_parser("report", help="reproducible reports of the paper's experiments")
    reports = p.add_subparsers(dest="report", required=True, metavar="REPORT")
    m = reports.add_parser(
        "mnist", help="the paper's MNIST experiment (METHOD 6) as JSON and PNG plots",
        description="Per resolution the accuracy, ROC AUC and active fraction of the even/odd"
        " and digits models under each rule, against one-shot baselines; writes report.json"
        " and PNG plots to --out (runs in this process, no Prefect or Dask).",
    )
    m.add_argument("--data-dir", metavar="DIR", default=defaults.mnist_data,
                   help=f"MNIST-format directory, or 'mnist' (default {defaults.mnist_data})")
    m.add_argument("--out", type=Path, metavar="DIR", default=Path("reports/mnist"),
                   help="output directory (default reports/mnist)")
    m.add_argument("--samples", type=int, metavar="N", help="the first N test images")
    m.add_argument("--model", type=Path, metavar="PATH",
                   help="even/odd model (default: trained on the training split)")
    m.add_argument("--digits-model", type=Path, metavar="PATH",
                   help="digits model (default: trained on the training split)")
    m.set_defaults(handler=_report_mnist)


def _add_stream(pipelines: Any, defaults: Settings) -> None:
    from layered.stream_cli import add_arguments

    p = pipelines.add_parser(
        "stream", help="the stream of matrix-vector jobs with deadlines (METHOD 5)",
        description="Poisson arrivals of matrix-vector jobs served FIFO by heterogeneous"
        " workers, in resolutions, under a deadline rule: simulated with the paper's"
        " parameters (--simulate), or for real on Dask with injected slow-downs and compared"
        " with its own simulation. Writes summary.json and PNG plots to <store>/<run id>.",
    )
    add_arguments(p)
    _common(p, defaults)
    p.set_defaults(handler=_run_stream)


def _run_stream(args: argparse.Namespace, settings: Settings) -> int:
    from layered.stream_cli import run_stream_command, summary_table

    summary = run_stream_command(args, settings)
    print(summary_table(summary))
    print(f"summary and plots: {Path(summary['plots'][0]).parent}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _add_deploy(commands: Any, defaults: Settings) -> None:
    p = commands.add_parser(
        "deploy", help="register the pipelines as deployments with nightly schedules",
        description="Register deployments (layered-matmul/nightly, layered-mnist/nightly) on"
        " a process work pool"
        " (created if missing), each with a nightly cron schedule; start a worker with"
        " `prefect worker start --pool POOL` to run them. Uses PREFECT_API_URL, or the"
        " server of `layered server start` (started if needed).",
    )
    p.add_argument("--pool", default=defaults.work_pool,
                   help=f"process work pool (default {defaults.work_pool})")
    p.add_argument("--cron", default=defaults.cron,
                   help=f"schedule (default '{defaults.cron}', {defaults.timezone})")
    p.add_argument("--address", default=defaults.dask_address, metavar="tcp://HOST:PORT",
                   help="Dask scheduler the scheduled runs use (default: a LocalCluster)")
    p.add_argument("--store", type=Path, metavar="DIR", default=defaults.store,
                   help=f"where the scheduled runs persist (default: {defaults.store})")
    p.set_defaults(handler=_deploy)


def _add_server(commands: Any, defaults: Settings) -> None:
    p = commands.add_parser(
        "server", help="a Prefect server (and UI) that stays up between runs",
        description="Start, stop or show a Prefect server on 127.0.0.1 with PREFECT_HOME="
        f"{defaults.prefect_home}; runs find it and report to it (instead of starting"
        " one each).",
    )
    p.add_argument("action", choices=("start", "stop", "status"))
    p.set_defaults(handler=_server)
    ui = commands.add_parser(
        "ui", help="print (and optionally open) the Prefect UI address of your runs",
        description="Start the server if it is not up (see `layered server`), then print"
        " the UI address.",
    )
    ui.add_argument("--open", action="store_true", help="also open it in a web browser")
    ui.set_defaults(handler=_ui)


# ---------------------------------------------------------------------------- commands
def _run_matmul(args: argparse.Namespace, settings: Settings) -> int:
    from layered.data.store import RunStore, new_run_id
    from layered.request import (
        MatmulRequest,
        check_kernel,
        check_limits,
        check_room,
        resolve_matmul,
        run_kernel,
    )

    check_limits(args.deadline, args.tolerance, args.block_rows)
    check_kernel(args.kernel, args.device)
    settings = settings.replace(store=args.store, dask_address=args.address,
                                block_rows=args.block_rows)
    run_id = args.run_id or new_run_id("matmul")
    request = MatmulRequest(
        shape=_tuple(args.shape), seed=args.seed, operands=_tuple(args.operands),
        bits=_tuple(args.bits), partition=_tuple(args.partition), ordering=args.ordering,
    )
    runs = RunStore(settings.store)
    stored = runs.read_manifest(run_id)
    spec = resolve_matmul(request, settings, stored["parameters"] if stored else None)
    runs.check_resumable(run_id, kind="matmul", parameters=spec.parameters)
    if stored is None:
        check_room(spec, settings.store)
    kernel = run_kernel(args.kernel, args.device, math.prod(spec.shape), settings)

    parameters = dict(
        shape=args.shape, seed=args.seed, operands=args.operands, bits=args.bits,
        partition=args.partition, ordering=args.ordering, deadline=args.deadline,
        tolerance=args.tolerance, store=str(settings.store), run_id=run_id,
        block_rows=settings.block_rows, kernel=kernel, device=args.device,
    )
    return _run_pipeline("matmul", parameters, settings, run_id, args.json,
                         warm_kernel=kernel != "numpy")


def _run_mnist(args: argparse.Namespace, settings: Settings) -> int:
    from layered.data.store import RunStore, new_run_id
    from layered.mnist_request import MnistRequest, resolve_mnist
    from layered.request import check_kernel, check_limits, run_kernel

    check_limits(args.deadline, None, None)
    check_kernel(args.kernel, args.device)
    settings = settings.replace(store=args.store, dask_address=args.address)
    run_id = args.run_id or new_run_id("mnist")
    request = MnistRequest(data_dir=args.data_dir, task=args.task, rule=args.rule,
                           model=args.model, samples=args.samples, chunk_size=args.chunk_size)
    runs = RunStore(settings.store)
    stored = runs.read_manifest(run_id)
    spec = resolve_mnist(request, settings, stored["parameters"] if stored else None)
    runs.check_resumable(run_id, kind="mnist", parameters=spec.parameters)
    if spec.trains:
        _say(f"no {spec.task} model at {spec.model_path}: this run trains one first and saves"
             " it there (`layered run train` does it alone)")

    kernel = run_kernel(args.kernel, args.device, spec.work, settings)

    parameters = dict(
        data_dir=str(spec.data_dir), task=spec.task, rule=spec.rule, model=args.model,
        deadline=args.deadline, samples=args.samples, chunk_size=args.chunk_size,
        store=str(settings.store), run_id=run_id, kernel=kernel, device=args.device,
    )
    return _run_pipeline("mnist", parameters, settings, run_id, args.json,
                         warm_kernel=kernel != "numpy")


def _run_train(args: argparse.Namespace, settings: Settings) -> int:
    from layered.data.store import RunStore, new_run_id
    from layered.mnist_request import resolve_train

    settings = settings.replace(store=args.store, dask_address=args.address)
    spec = resolve_train(settings, data_dir=args.data_dir, task=args.task, out=args.out,
                         samples=args.samples, epochs=args.epochs)
    run_id = args.run_id or new_run_id("train")
    RunStore(settings.store).check_resumable(run_id, kind="train", parameters=spec.parameters)

    parameters = dict(data_dir=str(spec.data_dir), task=spec.task, out=str(spec.out),
                      samples=args.samples, epochs=args.epochs, store=str(settings.store),
                      run_id=run_id)
    state = _run_flow("train", parameters, settings)
    summary = state.result() if state.is_completed() else {"run_id": run_id, "status": state.name}
    return _report(summary, state, args.json)


def _report_mnist(args: argparse.Namespace, settings: Settings) -> int:
    from layered.mnist_request import data_directory
    from layered.reports.mnist import run_mnist_report

    data_dir = data_directory(args.data_dir, ("train", "test"))
    report = run_mnist_report(data_dir, args.out, models=(args.model, args.digits_model),
                              samples=args.samples)
    for name in ("even-odd", "even-odd-2bit", "digits", "digits-2bit"):
        print(f"## {name}\n\n{report[name]['table']}\n")
    print(f"report.json and plots: {args.out}")
    return 0


def _run_pipeline(
    pipeline: str, parameters: dict[str, Any], settings: Settings, run_id: str,
    json_path: Path | None, warm_kernel: bool = False,
) -> int:
    """Run ``layered.flows.<pipeline>.<pipeline>_flow``, then report the run's summary as
    ``<pipeline>_summary`` reads it from the run's manifest. ``warm_kernel``: a run whose
    kernel may be torch, which a LocalCluster's workers load as they start."""
    import importlib

    from layered.data.store import RunStore

    state = _run_flow(pipeline, parameters, settings, warm_kernel)
    summarize = getattr(importlib.import_module(f"layered.flows.{pipeline}"),
                        f"{pipeline}_summary")
    manifest = RunStore(settings.store).read_manifest(run_id)
    summary = summarize(manifest or {"run_id": run_id, "resolutions": []}, settings.store)
    return _report(summary, state, json_path)


def _run_flow(
    pipeline: str, parameters: dict[str, Any], settings: Settings, warm_kernel: bool = False,
) -> Any:
    """Find or start the Prefect API and the cluster, then run the flow
    ``layered.flows.<pipeline>.<pipeline>_flow`` with ``parameters``; return its state.

    The server, the cluster and the flow run's preparation (the import of the flow and of
    Prefect, the API client, the flow run itself: :class:`_PreparedFlowRun`) start side by
    side; at the end the cluster closes while the server stops.
    """
    from layered.cluster import close_cluster, cluster_client, local_cluster
    from layered.server import prefect_api

    if settings.dask_address:  # connected now, and the same client serves the flow
        cluster_client(settings.dask_address, settings.scheduler_timeout_s)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        closing = _Background()
        stack.callback(closing.join)  # last: after the server stopped
        api = stack.enter_context(prefect_api(settings))
        stack.callback(_send_prefect_logs)  # while the API is still up, on any way out
        _say(f"Prefect API: {api.url} ({api.source})")
        # PREFECT_API_URL is set: Prefect may be imported now, while the server comes up.
        prepared = _PreparedFlowRun(pipeline, parameters, api, settings.server_timeout_s)
        stack.callback(prepared.abandon)  # a flow run that never ran is marked Crashed
        address = settings.dask_address
        if address is None:
            cluster = local_cluster(settings, warm_kernel=warm_kernel)
            address = cluster.scheduler_address
            stack.callback(closing.start, close_cluster, cluster)
            cluster_client(address, settings.scheduler_timeout_s)
        flow, client, flow_run = prepared.join()
        from prefect.flow_engine import run_flow
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        from layered.cluster import dask_task_runner

        _say(f"ready after {time.perf_counter() - t0:.2f} s; Dask scheduler {address}")
        t1 = time.perf_counter()
        flow = flow.with_options(task_runner=dask_task_runner(settings, address))
        flow.flow_run_name = None  # the flow run has its name already
        # No heartbeats: a run that dies is marked Crashed by the run that resumes it, and
        # the engine would wait up to a second at the end for the heartbeat thread. The
        # engine takes the API client it finds entered.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), client:
            prepared.started()
            state: Any = run_flow(flow, flow_run=flow_run, parameters=parameters,
                                  return_type="state")
        _say(f"flow run {state.name} after {time.perf_counter() - t1:.2f} s")
    _say(f"done after {time.perf_counter() - t0:.2f} s")
    return state


class _PreparedFlowRun:
    """The flow run of a command, prepared on a thread while the cluster starts.

    Imports the flow's module and what Prefect imports on a flow run's first call (the JSON
    encoder of its parameters, FastAPI's: about 0.4 s) and as its engine starts
    (:data:`_ENGINE_MODULES`), makes the API client (its TLS context alone takes 20 ms),
    waits for the API, checks its version and creates the flow run, named (about 40 ms of
    round trips): in the flow these would hold the interpreter while it fans out its first
    blocks, or delay its start. A flow run created for a command that fails before running
    it is marked Crashed (:meth:`abandon`), not left Pending in the UI.
    """

    def __init__(self, pipeline: str, parameters: dict[str, Any], api: Any,
                 timeout_s: float) -> None:
        self._lock = threading.Lock()
        self._ran = self._abandoned = False
        self._flow_run: Any = None
        self._client: Any = None
        self._thread = _Background().start(self._prepare, pipeline, parameters, api,
                                           timeout_s)

    def join(self) -> tuple[Any, Any, Any]:
        """The flow, the API client's context (to enter around the run) and the flow run."""
        return self._thread.join()

    def started(self) -> None:
        """The engine runs the flow run now: never mark it Crashed."""
        with self._lock:
            self._ran = True

    def abandon(self) -> None:
        """Mark the flow run Crashed unless it ran (or it is created later: then there)."""
        with self._lock:
            self._abandoned = True
            if self._ran or self._flow_run is None:
                return
        self._crash()

    def _prepare(self, pipeline: str, parameters: dict[str, Any], api: Any,
                 timeout_s: float) -> tuple[Any, Any, Any]:
        import importlib

        from layered.server import wait_ready

        for name in ("fastapi.encoders", *_ENGINE_MODULES):
            importlib.import_module(name)
        module = importlib.import_module(f"layered.flows.{pipeline}")
        for name in _ENGINE_MODELS:  # built on first use (pydantic's deferred build): 10 ms
            module_name, _, model = name.rpartition(".")
            getattr(importlib.import_module(module_name), model).model_rebuild()
        from prefect.context import SyncClientContext
        from prefect.states import Pending

        from layered.tasks import report

        flow = getattr(module, f"{pipeline}_flow")
        context = SyncClientContext()
        wait_ready(api, timeout_s)
        client = context.client
        # Started here and ended after the run (by :class:`_ClientContext`): the engine's
        # entry of the context only nests in it.
        client.__enter__()
        self._client = client
        try:
            client.raise_for_api_version_mismatch_once()
            flow_run = client.create_flow_run(
                flow, name=report.run_name(pipeline, parameters.get("run_id")),
                parameters=flow.serialize_parameters(parameters), state=Pending(),
            )
        except BaseException as exc:  # no run to end it after: end it now
            client.__exit__(type(exc), exc, exc.__traceback__)
            raise
        with self._lock:
            self._flow_run = flow_run
            abandoned = self._abandoned
        if abandoned:
            self._crash()
        return flow, _ClientContext(context, client), flow_run

    def _crash(self) -> None:
        from prefect.states import Crashed

        try:
            self._client.set_flow_run_state(
                self._flow_run.id, Crashed(message="the command stopped before the run"),
                force=True)
        except Exception:  # the API is gone: the flow run stays Pending
            pass


class _ClientContext:
    """The API client's context for the run: entering it enters Prefect's (the engine
    finds it); leaving it also ends the client, started by :class:`_PreparedFlowRun`."""

    def __init__(self, context: Any, client: Any) -> None:
        self._context, self._client = context, client

    def __enter__(self) -> Any:
        return self._context.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self._context.__exit__(*exc_info)
        self._client.__exit__(*exc_info)


#: What Prefect imports as a flow run starts and as its first task runs (about 25 ms that
#: would otherwise be on the flow run's path), and the synthetic operands' generator.
_ENGINE_MODULES = (
    "prefect.flow_engine", "prefect.task_engine", "prefect.engine", "prefect.artifacts",
    "prefect.utilities.visualization", "prefect._internal.control_listener",
    "prefect.telemetry.run_telemetry", "prefect.concurrency.v1.context",
    "prefect.concurrency.sync", "anyio._backends._asyncio", "numpy.random",
)
#: The API's models a flow run and its first task runs, logs and artifacts use.
_ENGINE_MODELS = tuple(f"prefect.client.schemas.{name}" for name in (
    "actions.FlowCreate", "actions.FlowRunCreate", "actions.FlowRunUpdate",
    "actions.LogCreate", "actions.ArtifactCreate", "actions.ArtifactUpdate",
    "objects.FlowRun", "objects.FlowRunPolicy", "objects.ConcurrencyLeaseHolder",
    "objects.Artifact",
)) + ("prefect.events.schemas.events.Event", "prefect.artifacts.TableArtifact",
      "prefect.artifacts.ProgressArtifact", "prefect.artifacts.MarkdownArtifact")


class _Background:
    """One call on a daemon thread: ``start(fn, *args)``, then ``join()`` for its result
    (or its exception); ``join`` before ``start`` returns None."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._outcome: dict[str, Any] = {}

    def start(self, fn: Callable[..., Any], *args: Any) -> _Background:
        def run() -> None:
            try:
                self._outcome["value"] = fn(*args)
            except BaseException as exc:  # re-raised by join
                self._outcome["error"] = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def join(self) -> Any:
        if self._thread is None:
            return None
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome.get("value")


def _send_prefect_logs() -> None:
    """Send the flow run's logs still queued to the Prefect API (at most 5 s)."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def _report(summary: dict[str, Any], state: Any, json_path: Path | None) -> int:
    if state.is_failed() or state.is_crashed():
        stopped = {"stopped_reason": None} if "stopped_reason" in summary else {}
        summary = {**summary, "status": "Failed", **stopped, "error": str(state.message)}
    print(json.dumps(summary, indent=2))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_FAILED if summary["status"] == "Failed" else 0


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    from layered.server import prefect_api, start_background, wait_ready

    settings = settings.replace(store=args.store, dask_address=args.address)
    if not os.environ.get("PREFECT_API_URL"):
        server = start_background(settings)
        _say(f"Prefect server: {server.ui_url}")
    with prefect_api(settings) as api:
        wait_ready(api, settings.server_timeout_s)
        from layered.deployments import register_deployments

        for name in register_deployments(settings, pool=args.pool, cron=args.cron):
            print(f"registered {name} on pool {args.pool!r} ({args.cron}, {settings.timezone})")
    print(f"run them with: prefect worker start --pool {args.pool}")
    return 0


def _server(args: argparse.Namespace, settings: Settings) -> int:
    from layered.server import running_server, start_background, stop_background

    if args.action == "start":
        server = start_background(settings)
        print(f"Prefect server up: UI {server.ui_url}  (API {server.url}, pid {server.pid})")
    elif args.action == "stop":
        stopped = stop_background(settings)
        print("stopped" if stopped else "no layered server was running")
    else:
        server = running_server(settings)
        print(f"up: UI {server.ui_url}  (API {server.url})" if server else "not running")
    return 0


def _ui(args: argparse.Namespace, settings: Settings) -> int:
    from layered.server import start_background

    server = start_background(settings)
    print(f"Prefect UI: {server.ui_url}/runs  (stop it with `layered server stop`)")
    if args.open:
        import webbrowser

        webbrowser.open(f"{server.ui_url}/runs")
    return 0


# ------------------------------------------------------------------------------- main
def _tuple(values: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _input_errors() -> tuple[type[BaseException], ...]:
    from layered.cluster import SchedulerUnreachableError
    from layered.data.operands import OperandError
    from layered.data.store import RunStoreError

    return (OperandError, RunStoreError, SchedulerUnreachableError, ValueError, SettingsError)


class _Terminated(BaseException):
    """SIGTERM reached the command (see _terminate)."""


def _terminate(signum: int, frame: Any, previous: Any) -> None:
    """SIGTERM raises :class:`_Terminated`, so the cluster and the server this command
    started are stopped on the way out. (During a flow run Prefect's handler comes first:
    it marks the flow run Crashed, then hands the signal on to this one.)"""
    raise _Terminated()


def _termination_signal() -> type[BaseException]:
    from prefect.exceptions import TerminationSignal

    return TerminationSignal


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``layered`` console script."""
    try:
        defaults = Settings.from_env()
    except SettingsError as exc:
        print(f"layered: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = build_parser(defaults).parse_args(argv)
    # Quiet by default: the progress lines below are the terminal output of a run.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    progress = logging.getLogger("layered.progress")
    if not progress.handlers:
        progress.addHandler(logging.StreamHandler(sys.stderr))
        progress.setLevel(logging.INFO)
        progress.propagate = False
    from layered.server import ServerStartError

    try:
        with signals.handling((signal.SIGTERM,), _terminate):
            return int(args.handler(args, defaults))
    except _input_errors() as exc:
        print(f"layered: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ServerStartError as exc:
        print(f"layered: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("layered: interrupted (Ctrl-C); what was persisted is kept", file=sys.stderr)
        return 128 + signal.SIGINT
    except (_Terminated, _termination_signal()):
        print("layered: terminated (SIGTERM); what was persisted is kept", file=sys.stderr)
        return 128 + signal.SIGTERM


def console() -> NoReturn:
    """The ``layered`` console script: :func:`main`, then a prompt exit with its status.

    Once a run has returned, Python's own finalization (freeing every module Prefect, Dask
    and numpy loaded: about 0.8 s here) is skipped: the threads still running are joined,
    the exit handlers run (Prefect's services send the events and logs they hold), the
    streams are flushed, and the process ends. An exception or ``SystemExit`` (``--help``,
    usage errors) ends it the usual way.
    """
    code = main()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
