"""Modules never share a name with a function or class they hold.

`import keras_regularize.models.mc_predict as m` must bind what its dotted
name says. Python resolves the last part as an attribute of the parent
package first, so a package exporting a function `mc_predict` beside a
module `mc_predict.py` hands back the function. Hence two rules, checked
for every module file of the package:

- the module holds no function or class of its own name;
- its parent package's attribute of that name, if any, is the module.
"""

import importlib
import inspect
import pathlib
import types

import pytest

import keras_regularize

# The same on every backend: the nox sessions run it once (tests(tensorflow)).
pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(keras_regularize.__file__).parent


def _module_names():
    for path in sorted(ROOT.rglob("*.py")):
        if path.stem.startswith("__"):
            continue  # __init__, __main__
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        yield ".".join(parts)


def _clashes(module, parent):
    """What makes `module`'s name ambiguous; empty when nothing does."""
    stem = module.__name__.rsplit(".", 1)[1]
    found = []
    held = getattr(module, stem, None)
    if inspect.isfunction(held) or inspect.isclass(held):
        found.append(f"{module.__name__} holds {type(held).__name__} {stem}")
    bound = getattr(parent, stem, module)
    if bound is not module:
        found.append(f"{parent.__name__}.{stem} is {bound!r}, not the module")
    return found


@pytest.mark.parametrize("name", list(_module_names()))
def test_module_name_is_not_a_function_or_class_it_holds(name):
    module = importlib.import_module(name)
    parent = importlib.import_module(name.rsplit(".", 1)[0])
    assert not _clashes(module, parent)


def test_dotted_import_binds_the_module():
    # The form the rule exists for, on the modules that broke it in 0.1.0.
    import keras_regularize.constraints.max_norm as max_norm
    import keras_regularize.layers.drop_path as drop_path
    import keras_regularize.models.monte_carlo as monte_carlo

    for module in (max_norm, drop_path, monte_carlo):
        assert isinstance(module, types.ModuleType)


def test_the_old_public_paths_still_name_the_functions():
    kr = keras_regularize
    paths = {
        "keras_regularize.layers.drop_path_rates": kr.layers.drop_path_rates,
        "keras_regularize.constraints.apply_max_norm": (
            kr.constraints.apply_max_norm
        ),
        "keras_regularize.models.mc_predict": kr.models.mc_predict,
        "keras_regularize.models.with_mc_dropout": kr.models.with_mc_dropout,
        "keras_regularize.models.MCPrediction": kr.models.MCPrediction,
    }
    for path, symbol in paths.items():
        package, name = path.rsplit(".", 1)
        assert getattr(importlib.import_module(package), name) is symbol
        assert inspect.isfunction(symbol) or inspect.isclass(symbol), path
        assert name in importlib.import_module(package).__all__, path


def test_the_check_catches_both_forms():
    parent = types.ModuleType("pkg")
    module = types.ModuleType("pkg.mc_predict")

    def mc_predict():
        pass

    module.mc_predict = mc_predict
    parent.mc_predict = mc_predict
    assert len(_clashes(module, parent)) == 2
    parent.mc_predict = module
    module.mc_predict = 1  # not a function or class
    assert not _clashes(module, parent)
