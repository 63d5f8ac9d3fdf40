"""Package hygiene: the public surface, registration and import rules."""

import ast
import importlib
import pathlib

import keras
import pytest

import keras_regularize
from keras_regularize._export import EXPORTED
from keras_regularize._export import PACKAGE

# The same on every backend: the nox sessions run it once (tests(tensorflow)).
pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(keras_regularize.__file__).parent
FORBIDDEN = ("tensorflow", "torch", "jax", "keras.src")


def test_every_export_resolves_and_is_listed_in_all():
    assert EXPORTED, "nothing exported"
    for path, symbol in EXPORTED.items():
        module_path, name = path.rsplit(".", 1)
        module = importlib.import_module(module_path)
        assert getattr(module, name) is symbol, path
        assert name in module.__all__, f"{name} missing from {module_path}"


def test_every_all_entry_is_exported():
    for sub in keras_regularize.__all__:
        if sub.startswith("__"):
            continue
        module = getattr(keras_regularize, sub)
        for name in module.__all__:
            assert f"{module.__name__}.{name}" in EXPORTED, name


def test_serializable_classes_are_registered_under_the_package():
    registered = 0
    for path, symbol in EXPORTED.items():
        if isinstance(symbol, type) and hasattr(symbol, "get_config"):
            name = keras.saving.get_registered_name(symbol)
            assert name == f"{PACKAGE}>{symbol.__name__}", path
            registered += 1
    assert registered


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize(
    "path",
    sorted(p for p in ROOT.rglob("*.py") if p.name != "_backend.py"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_framework_or_private_keras_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for name in _imports(tree):
        assert not any(
            name == f or name.startswith(f + ".") for f in FORBIDDEN
        ), f"{path.name} imports {name}"


def test_one_public_class_per_file():
    per_file = {}
    for symbol in EXPORTED.values():
        if isinstance(symbol, type):
            per_file.setdefault(symbol.__module__, []).append(symbol.__name__)
    crowded = {m: n for m, n in per_file.items() if len(n) > 1}
    assert not crowded, crowded


def test_version_comes_from_the_distribution():
    assert keras_regularize.__version__ != "0+unknown"


def _is_backend_name_call(node):
    """`keras.config.backend()` or `keras.backend.backend()`."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backend"
        and not node.args
    )


# Attributes only one backend's trainer has: duck typing on them is a backend
# decision too, so only `_backend.py` may name them.
BACKEND_ONLY_ATTRIBUTES = {"jax_state_sync", "_jax_state_synced"}


def _names_backend_only_attribute(node):
    if isinstance(node, ast.Attribute):
        return node.attr in BACKEND_ONLY_ATTRIBUTES
    return isinstance(node, ast.Constant) and (
        node.value in BACKEND_ONLY_ATTRIBUTES
    )


def _backend_decisions(tree):
    """Lines that compare the backend's name or look it up in a table."""
    lines = []
    for node in ast.walk(tree):
        if _names_backend_only_attribute(node):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_backend_name_call(s) for s in sides):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and any(
            _is_backend_name_call(a) for a in node.args
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and _is_backend_name_call(
            node.slice
        ):
            lines.append(node.lineno)
    return lines


def test_backend_decisions_live_in_backend_module_only():
    """Callers ask `_backend` a named question, never compare its name."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "_backend.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [
            f"{path.relative_to(ROOT)}:{n}" for n in _backend_decisions(tree)
        ]
    assert not found, f"backend-name decisions outside _backend.py: {found}"


def test_backend_decision_scan_catches_each_form():
    source = (
        "a = keras.config.backend() == 'torch'\n"
        "b = TABLE.get(keras.backend.backend(), 1)\n"
        "c = TABLE[keras.config.backend()]\n"
        "d = f'{keras.backend.backend()}'\n"
        "e = getattr(model, 'jax_state_sync', None)\n"
        "model.jax_state_sync()\n"
    )
    assert _backend_decisions(ast.parse(source)) == [1, 2, 3, 5, 6]
