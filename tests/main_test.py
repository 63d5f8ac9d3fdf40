"""Tests for the `keras-regularize` command line (`__main__`)."""

import importlib.util
import os
import re
import stat
import subprocess
import sys

import keras
import pytest

from keras_regularize import _cli_env
from keras_regularize.__main__ import main

COLUMNS = "| technique | train acc | val acc | gap | best epoch | seconds |"


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--epochs", "0"], "--epochs.*received '0'"),
        (["demo", "--seeds", "0"], "--seeds.*received '0'"),
        (["demo", "--techniques", "dropout,magic"], "unknown.*magic"),
        (["demo", "--backend", "mxnet"], "--backend.*'mxnet'"),
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
        for b, module in _cli_env.FRAMEWORKS.items()
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        pytest.skip("every framework is installed here")
    with pytest.raises(
        SystemExit, match=f"backend '{missing[0]}' is not available"
    ):
        _cli_env.check_backend(missing[0])


def test_backend_flag_is_applied_before_keras_is_imported():
    backend = keras.backend.backend()
    code = (
        "import sys; sys.argv = ['keras-regularize', 'demo', '--backend', "
        f"{backend!r}]; import keras_regularize, keras; "
        "print(keras.backend.backend())"
    )
    env = {**os.environ, "KERAS_BACKEND": "not-a-backend"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == backend, result.stderr


def test_requested_backend_parsing():
    assert _cli_env.requested_backend(["demo", "--backend", "jax"]) == "jax"
    assert _cli_env.requested_backend(["--backend=torch"]) == "torch"
    assert _cli_env.requested_backend(["demo"]) is None
