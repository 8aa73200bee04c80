"""layered: computation in successive resolutions.

Subpackages
-----------
layered.layering
    The method as a pure numpy library (partitions, orderings, layered products and
    networks, bounds, decision rules).
layered.data
    Data sources and sinks (MNIST-format IDX files, synthetic operands, the run store).
layered.tasks, layered.flows
    Prefect tasks and flows that run the method on Dask, and the ``layered`` CLI.
layered.deployments
    Deployment definitions with nightly schedules.
"""

__version__ = "0.1.0"
