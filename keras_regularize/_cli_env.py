"""Picks the Keras backend from `--backend` before Keras is first imported.

Imported by the package `__init__` ahead of `keras` (and importing nothing
but the standard library), so `keras-regularize demo --backend jax` and
`python -m keras_regularize demo --backend jax` select JAX even though the
package itself imports Keras.
"""

import importlib.util
import os
import sys

FRAMEWORKS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


def _launched_as_cli(argv):
    if not argv:
        return False
    # While `python -m keras_regularize` locates the package, argv[0] is "-m".
    first = os.path.basename(argv[0])
    return argv[0] == "-m" or first.startswith("keras-regularize")


def requested_backend(argv):
    """The value of `--backend X` or `--backend=X` in `argv`, if any."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


def check_backend(name):
    """Exits with a clear message when `name` is unknown or not installed."""
    if name not in FRAMEWORKS:
        sys.exit(
            f"keras-regularize: error: argument --backend: unknown backend "
            f"{name!r}; choose from {', '.join(FRAMEWORKS)}"
        )
    if importlib.util.find_spec(FRAMEWORKS[name]) is None:
        sys.exit(
            f"keras-regularize: error: argument --backend: backend {name!r} "
            f"is not available: the package {FRAMEWORKS[name]!r} is not "
            f"installed (pip install 'keras-regularize[{name}]')"
        )


def preselect_backend(argv=None):
    """Sets `KERAS_BACKEND` from the command line when run as the CLI."""
    argv = sys.argv if argv is None else argv
    if "keras" in sys.modules or not _launched_as_cli(argv):
        return
    name = requested_backend(argv[1:])
    if name is not None:
        check_backend(name)
        os.environ["KERAS_BACKEND"] = name
