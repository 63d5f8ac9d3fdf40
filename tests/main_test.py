"""Tests for the `keras-regularize` command line (`__main__`).

The commands run in this process (the launcher has its own tests), with
`--quick` and tiny epoch counts; one demo run is shared by several tests.
"""

import contextlib
import io
import os
import re
import stat

import pytest

from keras_regularize.__main__ import main

COLUMNS = (
    "| technique | train acc | val acc | gap | val loss | best epoch "
    "| seconds | Δ val acc vs none (± SE) | units at cap |"
)


def _png_ok(path):
    import matplotlib.pyplot as plt

    image = plt.imread(path)
    return image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def _table_rows(text, first_column, width=None):
    """The markdown rows of `report.md` as lists of stripped cells.

    With `width`, only rows of that many cells (the main table's).
    """
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(f"| {first_column}")
    ]
    return [r for r in rows if width is None or len(r) == width]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quick demo run (2 seeds, 2 epochs, 2 rows), shared by the tests."""
    out = tmp_path_factory.mktemp("demo") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(
            [
                "demo",
                "--quick",
                "--seeds",
                "2",
                "--epochs",
                "2",
                "--techniques",
                "none,max_norm",
                "--out",
                str(out),
            ]
        )
    return out, printed.getvalue(), (out / "report.md").read_text()


def test_demo_prints_the_table_and_where_the_report_went(demo):
    out, printed, _ = demo
    assert "technique" in printed and "max_norm" in printed
    assert "Δ val acc vs none" in printed
    assert f"Report written to {out / 'report.md'}" in printed
    assert "2 seed(s)" in printed and "30% of their labels" in printed


def test_demo_report_has_table_effects_and_plots(demo):
    out, _, text = demo
    assert COLUMNS in text
    rows = _table_rows(text, "technique", 9)
    assert [r[0] for r in rows] == ["none", "max_norm"]
    train_acc, val_acc, gap = (float(c.split(" ± ")[0]) for c in rows[0][1:4])
    assert 0.0 <= val_acc <= 1.0 and gap == pytest.approx(
        train_acc - val_acc, abs=2e-3
    )
    assert rows[0][7] == "-" and " pts" in rows[1][7]
    for png in ("effects.png", "curves.png", "gap.png"):
        assert _png_ok(out / png), png
        assert f"]({png})" in text


def test_demo_report_ends_with_start_simple(demo):
    _, _, text = demo
    ending = text[text.index("## Start simple") :]
    assert "gain per extra second" in ending and "| 1 | max_norm |" in ending
    # The ablation tests check the "what combining bought" line.


def test_demo_maxnorm_row_shows_that_the_cap_binds(demo):
    _, _, text = demo
    rows = {r[0]: r for r in _table_rows(text, "technique", 9)}
    assert rows["none"][-1] == "-"
    share = float(rows["max_norm"][-1].split(" ± ")[0].rstrip("%")) / 100
    # A cap no unit reaches would leave training as it was without it.
    assert share > 0.0
    assert "`max_norm`: units at cap after training" in text
    assert "the cap bound in 2 of 2 runs" in text


def test_ablate_dropout_writes_sweep_report(tmp_path, capsys):
    out = tmp_path / "ablate"
    main(
        [
            "ablate",
            "dropout",
            "--values",
            "0",
            "0.5",
            "--quick",
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert "dropout=0.5" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    rows = _table_rows(text, "technique", 8)
    assert [r[0] for r in rows] == ["none", "dropout=0.5"]
    for png in ("sweep.png", "curves.png", "effects.png"):
        assert _png_ok(out / png), png
    assert "(0 is the `none` row)" in text


def test_distill_quick_writes_table_report_and_plots(tmp_path, capsys):
    out = tmp_path / "distill"
    main(["distill", "--quick", "--epochs", "1", "--out", str(out)])
    assert "student distilled" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    header = "| model | weights | train acc | val acc | val loss | seconds |"
    assert header in text
    rows = {r[0]: r for r in _table_rows(text, "model", 6)}
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
    calls.clear()
    # Without --quick, 3 seeds where the runs compare; a given flag wins.
    main([command, "--epochs", "7", "--out", "x"])
    assert calls[0][:3] == (7, 3, "x")


def test_uncertainty_quick_writes_table_report_and_plots(tmp_path, capsys):
    out = tmp_path / "uncertainty"
    main(["uncertainty", "--quick", "--epochs", "1", "--out", str(out)])
    assert "most certain" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "| most certain | accuracy | mean entropy | max entropy |" in text
    rows = _table_rows(text, "most certain", 4)
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
        (["demo", "--label-noise", "1.5"], "--label-noise.*received '1.5'"),
        (["demo", "--label-noise", "nan"], "--label-noise.*received 'nan'"),
        (["distill", "--label-noise", "x"], "--label-noise.*received 'x'"),
        (["ablate", "magic"], "argument setting: invalid choice: 'magic'"),
        (["ablate", "dropout", "--values", "1"], "--values.*received '1'"),
        (
            ["ablate", "weight-decay", "--values", "0", "-0.1"],
            "--values.*received '-0.1'",
        ),
        (["ablate", "dropout", "--values", "abc"], "--values.*'abc'"),
        (["ablate", "dropout", "--epochs", "0"], "--epochs.*received '0'"),
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
