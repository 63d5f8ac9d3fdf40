"""Tests for the `keras-regularize` command line (`__main__`)."""

import os
import re
import stat

import pytest

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
