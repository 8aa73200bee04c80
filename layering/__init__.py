"""The layered-resolution method as a pure numpy library.

No I/O, no orchestration: partitions, orderings, layered products with guaranteed bounds,
layered network inference and decision rules.

Examples
--------
>>> import numpy as np
>>> from layered.layering import Partition, layered_matmul
>>> W = np.arange(12.0).reshape(3, 4); X = np.ones((4, 2))
>>> p = Partition.auto(W, bits=(2, 2))
>>> results = list(layered_matmul(W, X, p, Partition.auto(X, bits=(1, 1))))
>>> np.array_equal(results[-1].estimate, W @ X)
True
"""

from .activations import HIDDEN_ACTIVATIONS, OUTPUT_FUNCTIONS, PiecewiseLinear
from .decision import (
    RULE_NAMES,
    AnyOf,
    Certified,
    Deadline,
    DecisionContext,
    GrayZone,
    LogitBounds,
    Margin,
    Rule,
    predicted_class,
    resolve_rule,
)
from .kernel import (
    KERNEL_NAMES,
    KernelUnavailableError,
    NumpyKernel,
    ProductKernel,
    TorchKernel,
    resolve_kernel,
)
from .network import (
    STOP_REASONS,
    InferencePlan,
    InferenceResult,
    InferenceState,
    Network,
    ResolutionDecision,
    ResolutionUpgrade,
    layered_inference,
    one_shot_cost,
    plan_inference,
)
from .ordering import ORDERING_NAMES, Ordering, resolve_ordering
from .partition import Components, Partition, PartitionRangeError
from .product import (
    BOUND_KINDS,
    LayeredResult,
    SplitOperand,
    layered_matmul,
    prepare_block,
    resolution_block,
    static_bound,
)

__all__ = [
    "AnyOf",
    "Certified",
    "Deadline",
    "DecisionContext",
    "GrayZone",
    "HIDDEN_ACTIVATIONS",
    "InferencePlan",
    "InferenceResult",
    "InferenceState",
    "LogitBounds",
    "Margin",
    "Network",
    "OUTPUT_FUNCTIONS",
    "PiecewiseLinear",
    "ResolutionDecision",
    "ResolutionUpgrade",
    "RULE_NAMES",
    "Rule",
    "STOP_REASONS",
    "layered_inference",
    "one_shot_cost",
    "plan_inference",
    "predicted_class",
    "resolve_rule",
    "BOUND_KINDS",
    "Components",
    "LayeredResult",
    "NumpyKernel",
    "KERNEL_NAMES",
    "KernelUnavailableError",
    "TorchKernel",
    "resolve_kernel",
    "ORDERING_NAMES",
    "Ordering",
    "Partition",
    "PartitionRangeError",
    "ProductKernel",
    "SplitOperand",
    "layered_matmul",
    "prepare_block",
    "resolution_block",
    "resolve_ordering",
    "static_bound",
]
