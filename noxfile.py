"""Test, lint, benchmark and docs sessions for keras_regularize.

`nox` runs what CI runs (the default sessions below): lint, the suite on
TensorFlow and JAX with the newest Keras, `minimums` (the suite on PyTorch
with the oldest Keras that pyproject.toml allows, TensorFlow installed beside
it, so tf.data pipelines really run under the torch and jax backends), and
the docs build. `nox -s tests` runs the newest Keras on all three backends,
one framework per virtual environment. Framework specs come from the table
below and can be overridden per backend, e.g.
`KR_TORCH_SPEC="torch==2.13.0+cu126" nox -s "tests(torch)"` for a GPU build.
"""

import os
import re

import nox

nox.needs_version = ">=2025.02.09"
# pip-based venvs: the machine's pip configuration finds the local CPU build
# of torch; uv would ignore it and download a CUDA build of several GB.
nox.options.default_venv_backend = "venv"
# Within CI's 30 minutes on 2 cores: the newest Keras on TensorFlow and JAX,
# the oldest on PyTorch (the fastest suite), and the docs.
nox.options.sessions = [
    "lint",
    "tests(tensorflow)",
    "tests(jax)",
    "minimums",
    "docs",
]
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
TEST_DEPS = nox.project.dependency_groups(PYPROJECT, "test")
LINT_DEPS = nox.project.dependency_groups(PYPROJECT, "lint")
DOCS_DEPS = nox.project.dependency_groups(PYPROJECT, "docs")
PYTHON = "3.11"

BACKENDS = {
    "tensorflow": os.environ.get("KR_TENSORFLOW_SPEC", "tensorflow-cpu"),
    "torch": os.environ.get("KR_TORCH_SPEC", "torch==2.13.0"),
    "jax": os.environ.get("KR_JAX_SPEC", "jax[cpu]"),
}


def _lowest(requirement):
    """`name==X` for a requirement `name>=X` of pyproject.toml."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([^,;\s]+)", requirement)
    if match is None:
        raise ValueError(f"no lower bound to pin in {requirement!r}")
    return f"{match[1]}=={match[2]}"


def _check_backend(session, backend):
    session.env["KERAS_BACKEND"] = backend
    session.run(
        "python",
        "-c",
        "import keras; b = keras.backend.backend(); "
        f"assert b == {backend!r}, f'Keras runs on {{b}}, not {backend}'",
    )


def _install_backend(session, backend, *extra):
    """Installs one framework (and `extra`) and checks Keras runs on it."""
    # Skip byte-compiling the frameworks' many files at install time: CI
    # builds fresh venvs, and Python compiles what it imports anyway.
    session.env["PIP_NO_COMPILE"] = "1"
    session.install(*BACKENDS[backend].split(), *extra)
    session.install("-e", ".", *TEST_DEPS)
    session.env["PYTHONHASHSEED"] = "0"
    _check_backend(session, backend)


def _pytest(session, *args):
    session.run(
        "pytest",
        "-n",
        os.environ.get("KR_TEST_WORKERS", "2"),
        "--dist",
        "loadfile",
        *args,
    )


# Tests marked `backend_independent` (package hygiene, argument validation,
# the launcher, atomic file writes) check code that is the same on every
# backend: they run in one session only.
ONCE_BACKEND = "tensorflow"


def _once_filter(backend):
    """pytest args that leave out the run-once tests except on ONCE_BACKEND."""
    if backend == ONCE_BACKEND:
        return []
    return ["-m", "not backend_independent"]


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(BACKENDS), ids=list(BACKENDS))
def tests(session, backend):
    """Run unit tests and docstring examples on one Keras backend."""
    _install_backend(session, backend)
    _pytest(
        session,
        *_once_filter(backend),
        "--doctest-modules",
        "keras_regularize",
        "tests",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def minimums(session):
    """The suite on the oldest Keras allowed, with tf.data under torch/jax.

    PyTorch runs the whole suite with every dependency of the package at the
    lower bound of pyproject.toml. TensorFlow and JAX are installed beside
    it, so the tests marked `tf_data` (a tf.data pipeline calling our layers
    under a non-TensorFlow backend, as Keras documents for preprocessing)
    run for real under torch, and then again under jax.
    """
    lowest = [_lowest(r) for r in PYPROJECT["project"]["dependencies"]]
    _install_backend(
        session, "torch", BACKENDS["tensorflow"], BACKENDS["jax"], *lowest
    )
    session.run("python", "-m", "pip", "install", "--no-deps", *lowest)
    pins = ", ".join(repr(p) for p in lowest)
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m; "
        f"pins = [{pins}]; "
        "got = [p.split('==')[0] + '==' + m.version(p.split('==')[0]) "
        "for p in pins]; "
        "assert got == pins, f'installed {got}, wanted {pins}'",
    )
    _pytest(
        session,
        *_once_filter("torch"),
        "--doctest-modules",
        "keras_regularize",
        "tests",
        *session.posargs,
    )
    _check_backend(session, "jax")
    _pytest(session, "-m", "tf_data", "tests", *session.posargs)


@nox.session(python=PYTHON)
def lint(session):
    """Check style and formatting with ruff."""
    session.install(*LINT_DEPS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON, default=False)
@nox.parametrize("backend", list(BACKENDS), ids=list(BACKENDS))
def bench(session, backend):
    """Time our components against the anchors; writes bench/results/."""
    _install_backend(session, backend)
    session.install(*nox.project.dependency_groups(PYPROJECT, "bench"))
    if backend == "tensorflow":
        # keras-cv is an anchor to beat, never a dependency of the package.
        session.install("keras-cv==0.9.0")
    if backend == "torch":
        session.install("timm", "torchvision")
    scripts = sorted(f for f in os.listdir("bench") if f.endswith("_bench.py"))
    for script in session.posargs or scripts:
        session.run("python", os.path.join("bench", script))


@nox.session(python=PYTHON, default=False)
@nox.parametrize("backend", list(BACKENDS), ids=list(BACKENDS))
def examples(session, backend):
    """Run every example script in smoke mode (seconds each)."""
    _install_backend(session, backend)
    session.install("-e", ".[demo]")
    session.env["KR_SMOKE"] = "1"
    for script in sorted(os.listdir("examples")):
        # Files starting with "_" (such as _common.py) are shared helpers.
        if script.endswith(".py") and not script.startswith("_"):
            session.run("python", os.path.join("examples", script))


@nox.session(python=PYTHON, default=False)
def docs(session):
    """Build the documentation site with mkdocs --strict."""
    session.install(*DOCS_DEPS)
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", "-d", "site", *session.posargs)
