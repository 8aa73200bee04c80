"""The examples in the library's docstrings run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import layered.layering

MODULES = sorted(
    name for _, name, _ in pkgutil.iter_modules(layered.layering.__path__, "layered.layering.")
)


@pytest.mark.parametrize("name", ["layered.layering", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
