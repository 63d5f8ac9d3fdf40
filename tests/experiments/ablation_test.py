"""Tests for `keras_regularize.experiments.ablation` and its result."""

import io
import math

import keras
import numpy as np
import pytest

import keras_regularize as kr
from keras_regularize.experiments._progress import StudyProgress
from keras_regularize.experiments._techniques import NAMES
from keras_regularize.experiments.ablation_result import AblationResult
from keras_regularize.experiments.ablation_result import paired_difference
from keras_regularize.experiments.ablation_study import ablation
from keras_regularize.experiments.trial import Trial

SEEDS = 2
EPOCHS = 2


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = (np.argmax(x[:, :3], axis=1)).astype("int32")
    return x[:32], y[:32], x[32:], y[32:]


def build(seed, dropout=0.0, stochastic_depth=0.0):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    x = keras.layers.Dropout(dropout, seed=seed)(x)
    block = keras.layers.Dense(8, activation="relu")
    if stochastic_depth:
        x = kr.layers.StochasticResidual(block, stochastic_depth, seed=seed)(x)
    else:
        x = keras.layers.Add()([x, block(x)])
    # A second merge, so "drop_path" (linear schedule from 0) drops one.
    x = keras.layers.Add()([x, keras.layers.Dense(8, activation="relu")(x)])
    return keras.Model(inputs, keras.layers.Dense(3)(x))


SEEN = []


def sgd_with_marker(trial):
    """A user technique: another optimizer and one more callback."""
    SEEN.append(trial)
    trial.compile_args["optimizer"] = keras.optimizers.SGD(0.05)
    trial.fit_args["callbacks"].append(keras.callbacks.History())
    trial.measures["marker"] = lambda network: 0.5


# Every named technique appears in one row or another; "max_norm" is both
# a row of its own and part of a combination, with a user technique.
ROWS = {
    "max_norm": "max_norm=0.5",
    "stack_a": [
        "max_norm=0.5",
        sgd_with_marker,
        "dropout=0.3",
        "swa=0.5",
        "drop_path=0.3",
    ],
    "stack_b": [
        "weight_decay",
        "label_smoothing",
        "early_stopping=1",
        "ema=0.9",
        "mixup",
        "stochastic_depth=0.3",
        "sam",
    ],
}


@pytest.fixture(scope="module")
def result():
    SEEN.clear()
    return ablation(
        build,
        _data(),
        ROWS,
        seeds=SEEDS,
        epochs=EPOCHS,
        batch_size=16,
        progress=False,
        # Eager steps: on a model this small, compiling the steps costs
        # more than running them.
        run_eagerly=True,
    )


def test_every_named_technique_is_covered():
    named = set()
    for spec in ROWS.values():
        for part in spec if isinstance(spec, list) else [spec]:
            if isinstance(part, str):
                named.add(part.split("=")[0])
    assert named == set(NAMES)


def test_rows_seeds_and_metrics(result):
    assert result.names == ["none", *ROWS]
    assert len(result.runs) == len(result.names) * SEEDS
    assert result.seeds == [0, 1] and result.epochs == EPOCHS
    for run in result.runs:
        assert 0.0 <= run["val_acc"] <= 1.0 and 0.0 <= run["train_acc"] <= 1.0
        assert run["gap"] == pytest.approx(run["train_acc"] - run["val_acc"])
        assert run["val_loss"] > 0 and run["seconds"] > 0
        assert 1 <= run["best_epoch"] <= run["epochs_run"] <= EPOCHS
        assert len(run["history"]["val_accuracy"]) == run["epochs_run"]
    # Different seeds really differ (fresh weights per seed).
    none = result.values("none", "val_loss")
    assert none[0] != none[1]


def test_paired_effects_match_numpy(result):
    effects = result.effects()
    assert list(effects) == list(ROWS)
    base = np.array(
        [
            r["val_acc"]
            for s in result.seeds
            for r in result.runs
            if r["technique"] == "none" and r["seed"] == s
        ]
    )
    for name, effect in effects.items():
        d = result.values(name, "val_acc") - base
        assert effect["mean"] == pytest.approx(d.mean())
        assert effect["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
        assert effect["significant"] == (abs(d.mean()) > 2 * effect["se"])


def test_paired_difference_and_significance():
    effect = paired_difference([0.80, 0.83, 0.81], [0.70, 0.72, 0.72])
    d = np.array([0.10, 0.11, 0.09])
    assert effect["mean"] == pytest.approx(d.mean())
    assert effect["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    assert effect["significant"] and effect["n"] == 3
    noisy = paired_difference([0.8, 0.6], [0.7, 0.7])
    assert noisy["mean"] == pytest.approx(0.0) and not noisy["significant"]
    single = paired_difference([0.9], [0.8])
    assert math.isnan(single["se"]) and not single["significant"]


def test_user_technique_sees_a_trial_and_changes_the_run(result):
    assert [t.seed for t in SEEN] == [0, 1]
    for trial in SEEN:
        assert isinstance(trial, Trial) and trial.name == "stack_a"
        assert isinstance(trial.model.optimizer, keras.optimizers.SGD)
        assert trial.epochs == EPOCHS
    rows = {r[0]: r for r in result.rows()}
    column = result.columns().index("marker")
    assert rows["stack_a"][column] == "50% ± 0%"
    assert rows["none"][column] == "-"


def test_named_techniques_reach_the_run(result):
    runs = {(r["technique"], r["seed"]): r for r in result.runs}
    # Early stopping with patience 1 may stop at epoch 2 at the latest.
    assert runs[("stack_b", 0)]["epochs_run"] <= EPOCHS
    shares = [runs[("max_norm", s)]["measures"]["units at cap"] for s in (0, 1)]
    assert all(0.0 <= s <= 1.0 for s in shares)
    assert "units at cap" in result.columns()
    labels = result.labels
    assert labels["none"] == "no regularization"
    assert "MaxNorm(0.5)" in labels["max_norm"]
    assert "MixUp" in labels["stack_b"] and "weight EMA" in labels["stack_b"]
    assert result.components["stack_b"][0] == "stochastic_depth"
    # Named parts in registry order, user functions last.
    assert "drop path up to 0.3" in labels["stack_a"]
    assert result.components["stack_a"] == [
        "dropout",
        "drop_path",
        "max_norm",
        "swa",
        "sgd_with_marker",
    ]
    assert result.components["stack_b"][-1] == "sam"


def test_report_writes_markdown_and_plots(result, tmp_path):
    import matplotlib.pyplot as plt

    path = result.report(tmp_path / "r", title="Tiny", intro="Two seeds.")
    text = open(path).read()
    assert text.startswith("# Tiny") and "Two seeds." in text
    assert result.markdown() in text
    assert "## Start simple" in text and "What combining bought" in text
    assert "the cap bound in" in text
    for png in ("effects.png", "curves.png", "gap.png"):
        image = plt.imread(tmp_path / "r" / png)
        assert image.ndim == 3 and min(image.shape[:2]) > 50, png
        assert f"]({png})" in text
    assert "Δ val acc vs none" in result.table()


def test_report_refuses_an_unwritable_path(result, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="argument `path`"):
        result.report(blocker)
    with pytest.raises(ValueError, match="argument `path`"):
        result.report(3)


def test_result_from_plain_runs():
    runs = [
        {"technique": t, "seed": s, "val_acc": a}
        for t, accs in (("none", (0.5, 0.6)), ("x", (0.7, 0.7)))
        for s, a in zip((3, 5), accs)
    ]
    result = AblationResult(runs, ["none", "x"], {}, {}, [3, 5], 1, 0, 0)
    assert result.values("x").tolist() == [0.7, 0.7]
    with pytest.raises(ValueError, match="argument `name`"):
        result.values("y")
    with pytest.raises(ValueError, match="argument `metric`"):
        result.effects("accuracy")


def test_progress_bar_shows_technique_seed_and_eta():
    stream = io.StringIO()
    bar = StudyProgress(4, stream=stream)
    bar.begin_run("dropout | seed 1", 2)
    bar.epoch()
    bar.end_run()  # not a terminal: one line per run
    bar.begin_run("none | seed 0", 2)
    bar.end_run()  # stopped early: its epochs count as done
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "dropout | seed 1" in lines[0] and "ETA" in lines[0]
    assert " 50%" in lines[0] and "100%" in lines[1]
    quiet = io.StringIO()
    off = StudyProgress(1, stream=quiet, enabled=False)
    off.begin_run("x", 1)
    off.end_run()
    assert quiet.getvalue() == ""


def _build_without_kwarg(seed):
    return build(seed)


def _build_ignoring_dropout(seed, dropout=0.0):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def _build_two_outputs(seed):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


def _bad(data=None, **changes):
    x, y, xv, yv = _data()
    data = data if data is not None else (x, y, xv, yv)
    kwargs = {"seeds": 1, "epochs": 1, "progress": False, "run_eagerly": True}
    kwargs |= changes
    techniques = kwargs.pop("techniques", ["weight_decay"])
    builder = kwargs.pop("build_model", build)
    return lambda: ablation(builder, data, techniques, **kwargs)


x_, y_, xv_, yv_ = _data()


@pytest.mark.parametrize(
    "call, message",
    [
        (_bad(seeds=0), "`seeds`. Expected an integer >= 1.*seeds=0"),
        (_bad(seeds=True), "`seeds`.*seeds=True"),
        (_bad(seeds=[]), "`seeds`.*seeds=\\[\\]"),
        (_bad(seeds=[1, 1]), "`seeds`. Expected distinct"),
        (_bad(seeds=[0, -1]), "`seeds`.*seeds=-1"),
        (_bad(epochs=0), "`epochs`.*epochs=0"),
        (_bad(epochs=2.5), "`epochs`.*epochs=2.5"),
        (_bad(epochs="3"), "`epochs`.*epochs='3'"),
        (_bad(batch_size=0), "`batch_size`.*batch_size=0"),
        (_bad(learning_rate=0.0), "`learning_rate`.*learning_rate=0.0"),
        (_bad(learning_rate=math.nan), "`learning_rate`.*nan"),
        (_bad(progress="yes"), "`progress`.*progress='yes'"),
        (_bad(from_logits=1), "`from_logits`.*from_logits=1"),
        (_bad(run_eagerly=None), "`run_eagerly`.*run_eagerly=None"),
        (_bad(optimizer=keras.optimizers.Adam()), "`optimizer`.*fresh"),
        (_bad(optimizer="adamx"), "`optimizer`.*optimizer='adamx'"),
        (_bad(loss="mse"), "`loss`"),
        (
            _bad(techniques=["magic"]),
            "known technique names \\(dropout, stochastic_depth, drop_path, "
            ".*sam\\).*techniques='magic'",
        ),
        (_bad(techniques=[]), "at least one technique besides 'none'"),
        (_bad(techniques="dropout"), "`techniques`.*techniques='dropout'"),
        (_bad(techniques=[3]), "`techniques`.*techniques=3"),
        (_bad(techniques={"a": []}), "at least one technique"),
        (_bad(techniques={"a": ["sam", "sam"]}), "each named technique once"),
        (_bad(techniques=["dropout=1.5"]), "dropout'\\]=1.5"),
        (_bad(techniques=["dropout=abc"]), "dropout'\\]='abc'"),
        (_bad(techniques=["early_stopping=0"]), "early_stopping'\\]=0"),
        (_bad(techniques=["max_norm=-1"]), "max_norm'\\]=-1"),
        (_bad(build_model=3), "`build_model`.*build_model=3"),
        (
            _bad(techniques=["dropout"], build_model=_build_without_kwarg),
            "accepting the keyword argument\\(s\\) dropout",
        ),
        (
            _bad(techniques=["dropout"], build_model=_build_ignoring_dropout),
            "applies `dropout` when called with dropout=0.5",
        ),
        (_bad(build_model=_build_two_outputs), "`y_train`.*\\[0, 2\\)"),
        (_bad(data=(x_, y_, xv_)), "`data`"),
        (_bad(data=[1, 2, 3, 4]), "`x_train`"),
        (_bad(data=(x_.astype("int32"), y_, xv_, yv_)), "`x_train`.*int32"),
        (_bad(data=(x_, y_.astype("float32"), xv_, yv_)), "`y_train`"),
        (_bad(data=(x_, y_[:-1], xv_, yv_)), "shape.*`y_train`.*\\(31,\\)"),
        (_bad(data=(x_, y_, xv_[:, :3], yv_)), "`x_val`.*\\(16, 3\\)"),
        (_bad(data=(x_, y_ + 5, xv_, yv_)), "`y_train`.*\\[0, 3\\)"),
        (_bad(data=(x_, y_, xv_, yv_ - 1)), "`y_val`.*ids from -1"),
        (
            _bad(data=(x_ * np.nan, y_, xv_, yv_)),
            "`x_train`. Expected finite inputs",
        ),
    ],
)
def test_bad_inputs_name_the_argument_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_drop_path_refuses_a_model_whose_only_rate_is_zero():
    def one_merge(seed):
        inputs = keras.Input((4,))
        x = keras.layers.Dense(8, activation="relu")(inputs)
        x = keras.layers.Add()([x, keras.layers.Dense(8)(x)])
        return keras.Model(inputs, keras.layers.Dense(3)(x))

    with pytest.raises(ValueError, match="at least two residual merges"):
        ablation(
            one_merge,
            _data(),
            ["drop_path"],
            seeds=1,
            epochs=1,
            progress=False,
            run_eagerly=True,
        )
