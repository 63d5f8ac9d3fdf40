"""The `keras-regularize` launcher (`keras_regularize_cli`): backend choice,
console script, `python -m`, and an import that reads no command line.

These check the launcher's own logic, the same on every backend, so the nox
sessions run them once (marker `backend_independent`, run by
`tests(tensorflow)`).
"""

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

import keras_regularize_cli as launcher
from keras_regularize.__main__ import main

pytestmark = pytest.mark.backend_independent


def test_missing_backend_is_named():
    missing = [
        b
        for b, module in launcher.FRAMEWORKS.items()
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        pytest.skip("every framework is installed here")
    with pytest.raises(
        SystemExit, match=f"backend '{missing[0]}' is not available"
    ):
        launcher.check_backend(missing[0])
    # The launcher refuses it before importing anything of the package.
    with pytest.raises(
        SystemExit, match=f"backend '{missing[0]}' is not available"
    ):
        launcher.main(["demo", "--backend", missing[0]])


def test_unknown_backend_is_refused_by_the_launcher():
    with pytest.raises(SystemExit, match="unknown backend 'mxnet'; choose"):
        launcher.main(["demo", "--quick", "--backend", "mxnet"])


def _run(command, env):
    """Runs `command` with exactly `env`; returns its stdout."""
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _python(code, env=None):
    """Runs `code` in a fresh interpreter; returns its last stdout line."""
    env = os.environ if env is None else env
    return _run([sys.executable, "-c", code], env).strip().splitlines()[-1]


def _env_from_keras_json(tmp_path, backend):
    """An environment without KERAS_BACKEND whose keras.json picks one."""
    (tmp_path / "keras.json").write_text(json.dumps({"backend": backend}))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "KERAS_HOME": str(tmp_path)}


@pytest.mark.parametrize(
    "argv",
    [
        # 0.1.0 exited here, from inside `import keras_regularize`.
        ["keras-regularize", "demo", "--backend", "mxnet"],
        # 0.1.0 wrote KERAS_BACKEND into os.environ here.
        ["-m", "demo", "--backend", "BACKEND"],
    ],
    ids=["would-exit", "would-set-env"],
)
def test_import_reads_no_command_line(argv, tmp_path):
    backend = keras.backend.backend()
    argv = [backend if a == "BACKEND" else a for a in argv]
    code = (
        "import json, os, sys\n"
        f"sys.argv = {argv!r}\n"
        "before = dict(os.environ)\n"
        "import keras_regularize, keras\n"
        "print(json.dumps([dict(os.environ) == before, "
        "keras.config.backend()]))\n"
    )
    env = _env_from_keras_json(tmp_path, backend)
    same, running = json.loads(_python(code, env))
    assert same, "import keras_regularize changed os.environ"
    assert running == backend


def test_launcher_imports_only_the_standard_library():
    code = (
        "import sys, keras_regularize_cli\n"
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('keras', 'keras_regularize')))\n"
    )
    assert _python(code) == "[]"


def test_console_script_is_the_launcher():
    (script,) = [
        e
        for e in importlib.metadata.entry_points(group="console_scripts")
        if e.name == "keras-regularize"
    ]
    assert script.value == "keras_regularize_cli:main"


def _reported_backend(stdout):
    match = re.search(r"backend (\w+)\)", stdout)
    assert match, stdout
    return match.group(1)


def test_console_script_selects_the_backend():
    script = pathlib.Path(sys.executable).parent / "keras-regularize"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    backend = keras.backend.backend()
    # Keras could not even import with this value: the launcher must have
    # replaced it before importing the package.
    env = {**os.environ, "KERAS_BACKEND": "not-a-backend"}
    out = _run([str(script), "--backend", backend, "--version"], env)
    assert _reported_backend(out) == backend


def test_python_dash_m_runs_through_the_launcher():
    backend = keras.backend.backend()
    command = [sys.executable, "-m", "keras_regularize"]
    out = _run([*command, f"--backend={backend}", "--version"], os.environ)
    assert _reported_backend(out) == backend


def test_launcher_reruns_when_keras_runs_another_backend():
    # What `python -m keras_regularize --backend X` meets when the package
    # (and Keras) came up on another backend: a stand-in `keras` module on
    # "other", then the real command in a fresh interpreter on X.
    backend = keras.backend.backend()
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('keras')\n"
        "fake.config = types.SimpleNamespace(backend=lambda: 'other')\n"
        "sys.modules['keras'] = fake\n"
        "import keras_regularize_cli\n"
        f"status = keras_regularize_cli.main(['--backend', {backend!r}, "
        "'--version'])\n"
        "assert 'keras_regularize' not in sys.modules\n"
        "print('status', status)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "not-a-backend"}
    out = _run([sys.executable, "-c", code], env)
    assert _reported_backend(out) == backend
    assert out.strip().splitlines()[-1] == "status 0"


def test_in_process_main_refuses_another_backend(capsys):
    other = next(b for b in launcher.FRAMEWORKS if b != keras.backend.backend())
    with pytest.raises(SystemExit) as info:
        main(["demo", "--quick", "--backend", other])
    assert info.value.code == 2
    assert "Keras already runs" in capsys.readouterr().err


def test_requested_backend_parsing():
    assert launcher.requested_backend(["demo", "--backend", "jax"]) == "jax"
    assert launcher.requested_backend(["--backend=torch"]) == "torch"
    assert launcher.requested_backend(["demo"]) is None
    assert launcher.requested_backend(["demo", "--backend"]) is None
    assert launcher.requested_backend(["--", "--backend", "jax"]) is None
