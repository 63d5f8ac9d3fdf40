"""Launcher of the `keras-regularize` command: picks the backend, then runs.

Keras fixes its backend when it is first imported, and `keras_regularize`
imports Keras (its classes must be registered for `.keras` loading as soon
as the package is imported). So the console script points here, to a module
outside the package that imports only the standard library until it has
read `--backend X` and set `KERAS_BACKEND`; only then does it import
`keras_regularize.__main__` and run the command there.

`python -m keras_regularize ...` imports the package, and with it Keras,
before any of our code runs. Its `__main__` calls `main` here too; when
Keras is already running another backend than the one asked for, `main`
runs the command again in a fresh interpreter (`python -m
keras_regularize_cli ...`) with `KERAS_BACKEND` set, and returns its exit
status.
"""

import importlib.util
import os
import subprocess
import sys

FRAMEWORKS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


def requested_backend(argv):
    """The value of `--backend X` or `--backend=X` in `argv`, if any."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
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


def _running_backend():
    """The backend of an already imported Keras, or None if not imported."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    return keras.config.backend()


def backend_conflict(name):
    """The running backend, if Keras is imported and runs another than `name`.

    `None` when `name` is `None`, when Keras is not imported yet (setting
    `KERAS_BACKEND` still works) or when it runs `name` already.
    """
    running = _running_backend()
    if name is None or running is None or running == name:
        return None
    return running


def _rerun(argv, name):
    env = {**os.environ, "KERAS_BACKEND": name}
    command = [sys.executable, "-m", "keras_regularize_cli", *argv]
    return subprocess.run(command, env=env).returncode


def main(argv=None):
    """Runs `keras-regularize` with `argv` (default: `sys.argv[1:]`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = requested_backend(argv)
    if name is not None:
        check_backend(name)
        if backend_conflict(name) is not None:
            return _rerun(argv, name)
        if _running_backend() is None:
            os.environ["KERAS_BACKEND"] = name
    from keras_regularize.__main__ import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
