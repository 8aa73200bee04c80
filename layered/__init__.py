"""layered: computation in successive resolutions.

Subpackages
-----------
layered.layering
    The method as a pure numpy library (partitions, orderings, layered products and
    networks, bounds, decision rules).
layered.data
    Data sources and sinks (MNIST-format IDX files, synthetic operands, the run store).
layered.tasks, layered.flows
    Prefect tasks (one per resolution, its blocks plain Dask tasks) and the flows that
    run them, with the life of a run they share (``layered.flows.lifecycle``).
layered.cli, layered.stream_cli
    The ``layered`` command (it checks every option, then starts the Prefect API and the
    Dask cluster side by side, then runs a flow).
layered.request, layered.mnist_request
    What a run computes, completed from the resumed run and the settings, and checked
    before anything starts.
layered.server, layered.cluster
    The Prefect API a run reports to, and the Dask cluster it runs on.
layered.reports
    Reports of the paper's experiments (MNIST, the stream of jobs).
layered.deployments
    Deployment definitions with nightly schedules.

Imports read downward: command, request checks, flows, tasks, ``layered.layering``; the
data sources, the settings, the server and the cluster beside them.
"""

__version__ = "0.1.0"
