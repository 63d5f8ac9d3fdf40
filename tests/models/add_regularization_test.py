"""Tests for `keras_regularize.models.add_regularization`."""

import os
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_regularize._layer_walk import walk_layers
from keras_regularize.layers.drop_path import DropPath
from keras_regularize.layers.drop_path import drop_path_rates
from keras_regularize.layers.stochastic_residual import StochasticResidual
from keras_regularize.models._retrofit import add_regularization
from tests.harness import BACKEND
from tests.harness import AlwaysTraining
from tests.harness import assert_error_names_value
from tests.harness import binomial_ok


@keras.saving.register_keras_serializable("retrofit_test")
class StochasticDepth(keras.layers.Layer):
    """Stands in for keras.applications ConvNeXt's private layer."""

    def __init__(self, drop_path_rate, **kwargs):
        super().__init__(**kwargs)
        self.drop_path_rate = drop_path_rate

    def call(self, x, training=None):
        return x

    def get_config(self):
        return {**super().get_config(), "drop_path_rate": self.drop_path_rate}


def _dense(name, **kwargs):
    return keras.layers.Dense(8, name=name, **kwargs)


def small_model():
    """Seven residual merges of every kind, two nested sub-models, a head.

    In order: an identity `Add` layer; a projection skip (`+`); a `+` merge
    inside a Functional sub-model whose branch ends in our `DropPath`; an
    `Add` whose branch ends in a drop-connect `Dropout(noise_shape=(None,
    1))`; a `+` whose branch is a Sequential sub-model; a `+` whose branch
    ends in a ConvNeXt-style `StochasticDepth`; a `+` whose branch is
    also used after the merge (not extractable).
    """
    inputs = keras.Input((8,), name="x")
    x = _dense("stem")(inputs)
    x = keras.layers.Add(name="add_layer")([x, _dense("b1")(x)])
    short = _dense("proj")(x)
    branch = _dense("b2b")(_dense("b2a", activation="relu")(x))
    x = short + branch
    block_in = keras.Input((8,))
    inner = DropPath(0.3, name="old_drop_path")(_dense("inner")(block_in))
    x = keras.Model(block_in, block_in + inner, name="block")(x)
    drop = keras.layers.Dropout(0.2, noise_shape=(None, 1), name="connect")
    x = keras.layers.Add(name="add_connect")([x, drop(_dense("b4")(x))])
    seq = keras.Sequential([keras.Input((8,)), _dense("s1")], name="seq")
    x = x + seq(x)
    x = x + StochasticDepth(0.1, name="old_sd")(_dense("b6")(x))
    h = _dense("shared_h")(x)
    x = keras.layers.Average(name="avg")([x + h, h])
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="small")


N_SMALL = 7
RATE = 0.6
X = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _layers(model, cls):
    return [layer for layer in walk_layers(model) if type(layer) is cls]


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    model = small_model()
    before = _np(model(X, training=False))
    config = model.get_config()
    row, row_report = add_regularization(
        model, drop_path=RATE, head_dropout=0.5, seed=3
    )
    skip, skip_report = add_regularization(
        model, drop_path=RATE, drop_path_mode="skip", seed=5
    )
    return dict(
        model=model,
        before=before,
        config=config,
        row=row,
        row_report=row_report,
        skip=skip,
        skip_report=skip_report,
    )


def test_small_merges_counted_and_scheduled(small):
    report = small["row_report"]
    schedule = drop_path_rates(N_SMALL, RATE)
    assert len(report.merges) == N_SMALL
    assert report.rates == schedule
    kinds = [(m.kind, m.skip) for m in report.merges]
    assert kinds[0] == ("layer", "identity")
    assert kinds[1] == ("op", "projection")
    assert report.merges[2].name.startswith("block/")
    drop_paths = _layers(small["row"], DropPath)
    assert len(drop_paths) == N_SMALL
    by_name = {layer.name: layer.rate for layer in drop_paths}
    for merge in report.merges:
        assert by_name[merge.layer] == pytest.approx(merge.rate)
    # Existing drop layers are replaced, never stacked.
    replaced = [m.replaced for m in report.merges]
    assert replaced[2].startswith("DropPath(rate=0.3")
    assert replaced[3].startswith("Dropout(rate=0.2")
    assert replaced[5].startswith("StochasticDepth(drop_path_rate=0.1")
    names = {layer.name for layer in walk_layers(small["row"])}
    assert not names & {"old_drop_path", "connect", "old_sd"}
    # Seeds are distinct, so masks are independent.
    seeds = [layer.seed for layer in drop_paths]
    assert len(set(seeds)) == N_SMALL and min(seeds) >= 3


def test_small_report_prints(small):
    text = str(small["row_report"])
    assert f"{N_SMALL} residual merges" in text
    assert "projection" in text and "replaces DropPath" in text
    assert "Dropout(0.5) before 'head'" in text
    skip_text = str(small["skip_report"])
    assert "skip-mode fallbacks to 'row': 2" in skip_text


def test_small_inference_bit_identical_and_original_untouched(small):
    model = small["model"]
    for new in (small["row"], small["skip"]):
        assert np.array_equal(_np(new(X, training=False)), small["before"])
    assert np.array_equal(_np(model(X, training=False)), small["before"])
    assert model.get_config() == small["config"]
    assert [layer.name for layer in model.layers][-1] == "head"


def test_small_weights_shared(small):
    model = small["model"]
    replaced = {"old_drop_path", "connect", "old_sd"}
    kept = [
        v
        for layer in walk_layers(model)
        if layer.name not in replaced and not isinstance(layer, keras.Model)
        for v in layer.weights
    ]
    for new in (small["row"], small["skip"]):
        ids = {id(v) for v in new.weights}
        assert all(id(v) in ids for v in kept)
        assert {id(v) for v in new.trainable_weights} == {
            id(v) for v in model.trainable_weights
        }
        assert new.get_layer("stem") is model.get_layer("stem")
    # The new model adds only the rate and seed state of its new layers.
    assert len(small["row"].trainable_weights) == len(model.trainable_weights)


def test_small_head_dropout_before_last_dense(small):
    new = small["row"]
    head = new.get_layer("head")
    dropout = new.get_layer("head_head_dropout")
    assert type(dropout) is keras.layers.Dropout and dropout.rate == 0.5
    names = [layer.name for layer in new.layers]
    assert names.index("head_head_dropout") == names.index("head") - 1
    assert head is small["model"].get_layer("head")


def test_small_training_drops_samples_at_scheduled_rates(small):
    """Each top-level DropPath zeroes whole samples with its rate."""
    new = small["row"]
    drop_paths = [layer for layer in new.layers if type(layer) is DropPath]
    probe = keras.Model(new.input, [layer.output for layer in drop_paths])
    x = np.random.default_rng(1).normal(size=(512, 8)).astype("float32")
    outs = probe(x, training=True)
    assert len(drop_paths) >= 4
    for layer, out in zip(drop_paths, outs):
        out = _np(out)
        zeroed = int(np.sum(np.all(out == 0.0, axis=1)))
        assert binomial_ok(zeroed, len(x), layer.rate), (layer.name, zeroed)
    # And the model's per-sample outputs change in training.
    changed = np.any(_np(new(x, training=True)) != _np(new(x)), axis=1)
    assert changed.mean() > 0.9


def test_small_skip_mode(small):
    new, report = small["skip"], small["skip_report"]
    modes = [m.mode for m in report.merges]
    assert modes.count("skip") == N_SMALL - 2 and report.fallbacks == 2
    fallbacks = {m.name: m.fallback for m in report.merges if m.fallback}
    assert any("projection" in reason for reason in fallbacks.values())
    assert any("used elsewhere" in reason for reason in fallbacks.values())
    residuals = _layers(new, StochasticResidual)
    assert len(residuals) == N_SMALL - 2
    assert all(layer.mode == "batch" for layer in residuals)
    assert len(_layers(new, DropPath)) == 2
    assert np.array_equal(_np(new(X, training=False)), small["before"])


def test_skip_mode_skips_whole_batches_at_the_rate():
    """`StochasticResidual(mode="batch")`: one decision per batch."""
    inputs = keras.Input((8,))
    x = _dense("stem")(inputs)
    x = x + _dense("b0")(x)
    x = x + _dense("b1")(x)
    model = keras.Model(inputs, x)
    new, report = add_regularization(
        model, drop_path=0.5, drop_path_mode="skip", seed=0
    )
    assert [m.mode for m in report.merges] == ["skip", "skip"]
    layer = new.get_layer(report.merges[-1].layer)
    assert layer.rate == 0.5
    probe = AlwaysTraining(keras.Model(new.input, [layer.input, layer.output]))
    calls, skipped = 64, 0
    for _ in range(calls):
        x_in, x_out = probe.predict_on_batch(X[:4])
        same = np.all(x_in == x_out, axis=1)
        assert same.all() or not same.any()
        skipped += int(same.all())
    assert binomial_ok(skipped, calls, 0.5), skipped


def _fit(model, jit_compile="auto"):
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss="mse",
        jit_compile=jit_compile,
    )
    y = np.zeros((len(X), 3), "float32")
    history = model.fit(X, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("mode", ["row", "skip"])
def test_small_jit_fit(mode):
    model = small_model()
    new, _ = add_regularization(
        model, drop_path=0.5, drop_path_mode=mode, seed=0
    )
    _fit(new, jit_compile=BACKEND != "torch")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["row", "skip"])
def test_small_jit_fit_torch_compile(mode):
    new, _ = add_regularization(
        small_model(), drop_path=0.5, drop_path_mode=mode, seed=0
    )
    _fit(new, jit_compile=True)


def test_mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = small_model()
        new, _ = add_regularization(model, drop_path=0.5, head_dropout=0.2)
        skip, _ = add_regularization(
            model, drop_path=0.5, drop_path_mode="skip"
        )
    finally:
        keras.config.set_dtype_policy("float32")
    for layer in _layers(new, DropPath) + _layers(skip, StochasticResidual):
        assert layer.dtype_policy.name == "mixed_float16"
    assert np.array_equal(_np(new(X[:4])), _np(model(X[:4])))
    _fit(new)
    _fit(skip)


def test_keras_round_trip_copies_weights(small, tmp_path):
    for key in ("row", "skip"):
        new = small[key]
        path = os.path.join(tmp_path, f"{key}.keras")
        new.save(path)
        loaded = keras.saving.load_model(path)
        assert np.array_equal(_np(loaded(X, training=False)), small["before"])
        assert len(_layers(loaded, DropPath)) == len(_layers(new, DropPath))
        # The file holds a copy: the loaded model's variables are its own.
        ids = {id(v) for v in new.weights}
        assert not any(id(v) in ids for v in loaded.weights)
    # The original still saves and loads after its layers were reused.
    path = os.path.join(tmp_path, "original.keras")
    small["model"].save(path)
    loaded = keras.saving.load_model(path)
    assert np.array_equal(_np(loaded(X, training=False)), small["before"])


def test_training_new_model_trains_original_too():
    model = small_model()
    new, _ = add_regularization(model, drop_path=0.1)
    before = _np(model(X))
    _fit(new)
    after = _np(model(X))
    assert not np.array_equal(before, after)
    assert np.array_equal(after, _np(new(X)))


def test_drop_path_zero_leaves_merges_alone():
    model = small_model()
    new, report = add_regularization(model, head_dropout=0.3)
    assert len(report.merges) == N_SMALL
    assert all(m.mode == "none" for m in report.merges)
    assert not any(type(layer) is DropPath for layer in new.layers)
    assert new.get_layer("connect") is model.get_layer("connect")


def test_sequential_warns_and_head_dropout_works():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    with pytest.warns(UserWarning, match="found no residual merges"):
        new, report = add_regularization(
            model, drop_path=0.2, head_dropout=0.5, seed=1
        )
    assert report.merges == () and report.head == "out"
    assert [type(layer).__name__ for layer in new.layers] == [
        "InputLayer",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert np.array_equal(_np(new(X)), _np(model(X)))
    x = np.ones((256, 8), "float32")
    hidden = keras.Model(new.input, new.get_layer("out_head_dropout").output)
    zeros = _np(hidden(x, training=True)) == 0
    base = _np(model.get_layer("hidden")(x)) == 0
    dropped = int(np.sum(zeros & ~base))
    assert binomial_ok(dropped, int(np.sum(~base)), 0.5)


class Opaque(keras.layers.Layer):
    """A subclassed residual block: its merge is invisible."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(8)

    def call(self, x):
        return x + self.dense(x)


def test_subclassed_layers_are_opaque_and_named():
    inputs = keras.Input((8,))
    x = Opaque(name="custom_block")(inputs)
    x = x + _dense("b")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(UserWarning, match="custom_block"):
        _, report = add_regularization(model, drop_path=0.2)
    assert report.opaque == ("custom_block",)
    assert len(report.merges) == 1


def test_undecidable_add_is_named():
    a = keras.Input((8,), name="a")
    b = keras.Input((8,), name="b")
    x = keras.layers.Add(name="two_inputs")([a, b])
    x = x + _dense("b1")(x)
    model = keras.Model([a, b], x)
    with pytest.warns(UserWarning, match="two_inputs.*share no ancestor"):
        _, report = add_regularization(model, drop_path=0.2)
    assert report.skipped[0][0] == "two_inputs"
    assert len(report.merges) == 1


BAD_RATES = [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, "0.1", None]


@pytest.mark.parametrize("argument", ["drop_path", "head_dropout"])
@pytest.mark.parametrize("value", BAD_RATES, ids=repr)
def test_bad_rates(argument, value):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=f"argument `{argument}`") as info:
        add_regularization(model, **{argument: value})
    assert_error_names_value(info.value, argument, repr(value))


@pytest.mark.parametrize("value", ["batch", "ROW", None, 1, True])
def test_bad_mode(value):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`drop_path_mode`") as info:
        add_regularization(model, drop_path_mode=value)
    assert_error_names_value(info.value, "drop_path_mode", repr(value))


@pytest.mark.parametrize("value", [-1, 1.5, "0", True])
def test_bad_seed(value):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`seed`"):
        add_regularization(model, seed=value)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return x + self.dense(x)


@pytest.mark.parametrize(
    "value, match",
    [
        (Subclassed(), "subclassed model"),
        (keras.Sequential([keras.layers.Dense(2)]), "built Sequential"),
        (keras.layers.Dense(2), "subclassed model"),
        ("resnet", "subclassed model"),
        (None, "subclassed model"),
    ],
    ids=["subclassed", "unbuilt-sequential", "layer", "string", "none"],
)
def test_bad_model(value, match):
    with pytest.raises(ValueError, match=f"argument `model`.*{match}"):
        add_regularization(value, drop_path=0.1)


def test_arguments_are_keyword_only():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(TypeError):
        add_regularization(model, 0.1)


# -- keras.applications ------------------------------------------------------

APPLICATIONS = {
    "ResNet50": 16,
    "ResNet50V2": 16,
    "MobileNetV2": 10,
    "EfficientNetB0": 9,
    "ConvNeXtTiny": 18,
}
IMAGES = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")


def _application(name):
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(keras.applications, name)(
            weights=None, input_shape=(32, 32, 3)
        )
    before = _np(model(IMAGES, training=False))
    new, report = add_regularization(
        model, drop_path=0.2, head_dropout=0.1, seed=0
    )
    return dict(model=model, before=before, new=new, report=report)


def _check_application(name, built):
    model, new, report = built["model"], built["new"], built["report"]
    count = APPLICATIONS[name]
    assert len(report.merges) == count, str(report)
    assert report.rates == drop_path_rates(count, 0.2)
    drop_paths = _layers(new, DropPath)
    assert len(drop_paths) == count
    assert sorted(layer.rate for layer in drop_paths) == pytest.approx(
        sorted(report.rates)
    )
    assert np.array_equal(_np(new(IMAGES, training=False)), built["before"])
    ids = {id(v) for v in new.weights}
    assert all(id(v) in ids for v in model.weights)
    return report


@pytest.fixture(scope="module")
def resnet50():
    return _application("ResNet50")


def test_resnet50(resnet50):
    report = _check_application("ResNet50", resnet50)
    skips = [m.skip for m in report.merges]
    assert skips.count("projection") == 4  # one conv shortcut per stage
    assert all(m.kind == "layer" for m in report.merges)
    assert report.head == "predictions"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["ResNet50V2", "MobileNetV2", "EfficientNetB0", "ConvNeXtTiny"]
)
def test_application(name):
    built = _application(name)
    report = _check_application(name, built)
    if name == "ConvNeXtTiny":
        assert all(m.kind == "op" for m in report.merges)
    if name == "EfficientNetB0":
        # Its drop-connect Dropouts are replaced, never stacked.
        assert all(m.replaced.startswith("Dropout(") for m in report.merges)
        assert not _layers(built["new"], keras.layers.Dropout)[:-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "ConvNeXtTiny"])
def test_application_training_frequency_and_skip(name):
    built = _application(name)
    new = built["new"]
    drop_paths = [layer for layer in new.layers if type(layer) is DropPath]
    last = drop_paths[-1]
    probe = keras.Model(new.input, last.output)
    x = np.random.default_rng(2).normal(size=(64, 32, 32, 3))
    out = _np(probe(x.astype("float32"), training=True))
    zeroed = int(np.sum(np.all(out.reshape(len(x), -1) == 0, axis=1)))
    assert binomial_ok(zeroed, len(x), last.rate)
    skip, report = add_regularization(
        built["model"], drop_path=0.5, drop_path_mode="skip"
    )
    # The training call above moved the shared batch-norm statistics.
    now = _np(built["model"](IMAGES, training=False))
    assert np.array_equal(_np(skip(IMAGES, training=False)), now)
    assert report.fallbacks == sum(
        m.skip == "projection" for m in report.merges
    )


@pytest.mark.slow
def test_convnext_private_stochastic_depth_is_replaced():
    convnext = sys.modules["keras.src.applications.convnext"]
    model = convnext.ConvNeXt(
        depths=[1, 1, 1, 1],
        projection_dims=[8, 8, 8, 8],
        drop_path_rate=0.3,
        weights=None,
        input_shape=(32, 32, 3),
        include_preprocessing=False,
        name="tiny_convnext",
    )
    new, report = add_regularization(model, drop_path=0.1)
    # ConvNeXt's first block has rate 0, hence a linear Activation instead.
    replaced = [m.replaced for m in report.merges]
    assert replaced[0] is None
    assert all(r.startswith("StochasticDepth") for r in replaced[1:])
    assert not any(
        type(layer).__name__ == "StochasticDepth" for layer in walk_layers(new)
    )
