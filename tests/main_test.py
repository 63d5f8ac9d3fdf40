"""Tests for the `keras-regularize` command line (`__main__`)."""

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import stat
import subprocess
import sys

import keras
import pytest

import keras_regularize_cli as launcher
from keras_regularize.__main__ import main

COLUMNS = (
    "| technique | train acc | val acc | gap | val loss | best epoch "
    "| units at cap | seconds |"
)


def _png_ok(path):
    import matplotlib.pyplot as plt

    image = plt.imread(path)
    return image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_demo_quick_writes_table_report_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    main(
        [
            "demo",
            "--quick",
            "--techniques",
            "none,stochastic_depth",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "technique" in printed and "stochastic_depth" in printed
    text = (out / "report.md").read_text()
    assert COLUMNS in text
    rows = [line for line in text.splitlines() if line.startswith("| none")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    train_acc, val_acc, gap = (float(c) for c in cells[1:4])
    assert 0.0 <= val_acc <= 1.0 and gap == pytest.approx(
        train_acc - val_acc, abs=2e-3
    )
    for png in ("loss_curves.png", "gap.png"):
        assert _png_ok(out / png), png


def _table_rows(text, first_column):
    """The markdown rows of `report.md` as lists of stripped cells."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(f"| {first_column}")
    ]


def test_distill_quick_writes_table_report_and_plots(tmp_path, capsys):
    out = tmp_path / "distill"
    main(["distill", "--quick", "--out", str(out)])
    assert "student distilled" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    header = "| model | weights | train acc | val acc | val loss | seconds |"
    assert header in text
    rows = {r[0]: r for r in _table_rows(text, "model")}
    assert set(rows) == {"teacher", "student alone", "student distilled"}
    # Same student architecture alone and distilled; a larger teacher.
    weights = {k: int(r[1].replace(",", "")) for k, r in rows.items()}
    assert weights["student alone"] == weights["student distilled"]
    assert weights["teacher"] > 10 * weights["student alone"]
    for row in rows.values():
        assert 0.0 <= float(row[3]) <= 1.0 and float(row[4]) > 0.0
    for png in ("val_accuracy.png", "accuracy.png"):
        assert _png_ok(out / png), png


@pytest.mark.parametrize("command", ["distill", "uncertainty"])
def test_demo_prefix_is_an_alias(monkeypatch, command):
    import importlib

    module = importlib.import_module(f"keras_regularize._demo.{command}")
    calls = []
    monkeypatch.setattr(module, "run", lambda *args: calls.append(args))
    main(["demo", command, "--quick", "--out", "x"])
    assert calls and calls[0][:3] == (3, 1, "x")


def test_uncertainty_quick_writes_table_report_and_plots(tmp_path, capsys):
    out = tmp_path / "uncertainty"
    main(["uncertainty", "--quick", "--out", str(out)])
    assert "most certain" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "| most certain | accuracy | mean entropy | max entropy |" in text
    rows = _table_rows(text, "most certain")
    assert [r[0] for r in rows] == ["100%", "90%", "75%", "50%", "25%"]
    accuracy = [float(r[1]) for r in rows]
    mean_entropy = [float(r[2]) for r in rows]
    # Keeping only the most certain inputs lowers their mean entropy; their
    # accuracy is not lower than on all inputs (ties only if all correct).
    assert mean_entropy == sorted(mean_entropy, reverse=True)
    assert min(accuracy[1:]) >= accuracy[0] - 1e-9
    for png in ("accuracy_vs_entropy.png", "most_uncertain.png"):
        assert _png_ok(out / png), png


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--epochs", "0"], "--epochs.*received '0'"),
        (["demo", "--seeds", "0"], "--seeds.*received '0'"),
        (["demo", "--techniques", "dropout,magic"], "unknown.*magic"),
        (["demo", "--backend", "mxnet"], "--backend.*'mxnet'"),
        (["distill", "--epochs", "-1"], "--epochs.*received '-1'"),
        (["uncertainty", "--samples", "0"], "--samples.*received '0'"),
        (["uncertainty", "--seeds", "two"], "--seeds.*received 'two'"),
    ],
)
def test_bad_flags_name_the_flag_and_value(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_fails_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IREAD | stat.S_IEXEC)
    with pytest.raises(SystemExit, match="--out: cannot write"):
        main(["demo", "--quick", "--out", str(locked / "r")])


def test_out_that_is_a_file_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match="--out: cannot write"):
        main(["demo", "--quick", "--out", str(blocker)])


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


def test_demo_maxnorm_row_shows_that_the_cap_binds(tmp_path):
    out = tmp_path / "report"
    main(
        [
            "demo",
            "--quick",
            "--techniques",
            "none,maxnorm_dropout",
            "--out",
            str(out),
        ]
    )
    header = COLUMNS.strip("|").split("|")
    rows = {
        r[0]: r
        for r in _table_rows((out / "report.md").read_text(), "technique")
        if len(r) == len(header)
    }
    column = header.index(" units at cap ")
    assert rows["none"][column] == "-"
    share = float(rows["maxnorm_dropout"][column].rstrip("%")) / 100
    # A cap no unit reaches would leave training as it was without it.
    assert share > 0.0
