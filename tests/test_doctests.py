"""The examples in the docstrings run and give what they show (the library, and the
pipeline modules whose examples need no cluster)."""

import doctest
import importlib
import pkgutil

import pytest

import layered.layering

MODULES = sorted(
    name for _, name, _ in pkgutil.iter_modules(layered.layering.__path__, "layered.layering.")
)


PIPELINE_MODULES = ["layered.tasks.matmul", "layered.tasks.chain", "layered.tasks.mnist",
                    "layered.tasks.report", "layered.tasks.charts", "layered.flows.lifecycle",
                    "layered.flows.signals", "layered.cluster", "layered.server", "layered.request",
                    "layered.stream_cli"]


@pytest.mark.parametrize("name", ["layered.layering", *MODULES, *PIPELINE_MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
