"""Tests for keras_regularize.models.mc_predict."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_regularize.layers import MCDropout
from keras_regularize.models import mc_predict
from tests import harness

STRATEGIES = ["tile", "tile_inputs", "loop"]


def _model(outputs=3, activation="softmax", rate=0.3, noise_shape=None):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = MCDropout(rate, noise_shape=noise_shape, seed=1)(h)
    out = keras.layers.Dense(outputs, activation=activation)(h)
    return keras.Model(inputs, out)


def _x(n=20, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6)).astype("float32")


def _bn_state(model):
    bn = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    return [harness.to_numpy(v).copy() for v in bn.non_trainable_weights]


def _randomize_bn(model):
    """Non-trivial moving statistics, so a change cannot hide."""
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.non_trainable_weights:
                v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))


def _entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_norm_statistics_are_bit_identical_afterwards(strategy):
    model = _model()
    _randomize_bn(model)
    before = _bn_state(model)
    mc_predict(model, _x(), samples=8, batch_size=7, strategy=strategy)
    for a, b in zip(before, _bn_state(model)):
        np.testing.assert_array_equal(a, b)
    # The usual recipe moves them (the defect mc_predict avoids).
    model(_x(), training=True)
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, _bn_state(model))
    )


@pytest.mark.parametrize(
    "strategy, from_logits",
    [("tile", False), ("tile_inputs", True), ("loop", True)],
)
def test_statistics_match_a_numpy_reference_on_the_same_samples(
    strategy, from_logits
):
    activation = None if from_logits else "softmax"
    model = _model(outputs=4, activation=activation)
    result = mc_predict(
        model,
        _x(),
        samples=12,
        batch_size=8,
        from_logits=from_logits,
        return_samples=True,
        strategy=strategy,
    )
    p = result.samples.astype("float64")
    assert p.shape == (12, 20, 4)
    # Samples are softmax outputs (of the logits when from_logits=True).
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert np.all(p.std(axis=0).max(-1) > 0), "an input was not sampled"
    mean = p.mean(0)
    np.testing.assert_allclose(result.mean, mean, atol=1e-6)
    np.testing.assert_allclose(result.variance, p.var(0), atol=1e-6)
    np.testing.assert_allclose(result.entropy, _entropy(mean), atol=1e-5)
    mutual = _entropy(mean) - _entropy(p).mean(0)
    np.testing.assert_allclose(
        result.mutual_information, np.maximum(mutual, 0), atol=1e-5
    )
    assert np.all(result.mutual_information >= 0)


def test_a_single_sigmoid_unit_is_read_as_bernoulli():
    model = _model(outputs=1, activation="sigmoid")
    result = mc_predict(model, _x(), samples=10, return_samples=True)
    p = result.samples.astype("float64")[..., 0]
    two = np.stack([1 - p, p], -1)
    np.testing.assert_allclose(result.entropy, _entropy(two.mean(0)), atol=1e-5)
    np.testing.assert_allclose(
        result.mutual_information,
        np.maximum(_entropy(two.mean(0)) - _entropy(two).mean(0), 0),
        atol=1e-5,
    )
    assert result.mean.shape == (20, 1) and result.entropy.shape == (20,)


def test_tiled_and_looped_samples_have_the_same_distribution():
    model = _model(rate=0.5)
    x = _x(4)
    n = 400
    tile = mc_predict(model, x, samples=n, strategy="tile")
    loop = mc_predict(model, x, samples=n, strategy="loop")
    # Each mean is an average of n draws; compare within 5 standard
    # errors of the difference.
    se = np.sqrt((tile.variance + loop.variance) / n)
    assert np.all(np.abs(tile.mean - loop.mean) <= 5 * se + 1e-6)
    np.testing.assert_allclose(tile.variance, loop.variance, rtol=0.4)


def test_looped_samples_are_calls_with_training_false():
    # A rate of 1e-9 counts as stochastic but (almost surely) never drops,
    # so tiling and chunking must reproduce the deterministic output.
    model = _model(rate=1e-9)
    x = _x(13)
    expected = harness.to_numpy(model(x, training=False))
    for strategy in STRATEGIES:
        result = mc_predict(
            model, x, samples=3, batch_size=5, strategy=strategy
        )
        np.testing.assert_allclose(result.mean, expected, atol=1e-6)
        np.testing.assert_allclose(result.variance, 0.0, atol=1e-10)


class RowRecorder(keras.layers.Layer):
    """Records the (static) number of rows of every traced or eager call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = []

    def call(self, x):
        # Skip torch's shape inference on the "meta" device (fake sizes).
        if "meta" not in str(getattr(x, "device", "")):
            self.rows.append(x.shape[0])
        return x


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_is_bounded_by_the_chunk_size(strategy):
    before, after = RowRecorder(), RowRecorder()
    inputs = keras.Input((6,))
    h = after(MCDropout(0.2, seed=0)(before(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3, "softmax")(h))
    samples, batch_size = 5, 8
    before.rows.clear()
    after.rows.clear()
    result = mc_predict(
        model, _x(50), samples=samples, batch_size=batch_size, strategy=strategy
    )
    assert result.mean.shape == (50, 3)

    def concrete(rows):
        # Symbolic shape inference may record non-int placeholders.
        return {r for r in rows if isinstance(r, int)}

    tiled = batch_size * samples
    expected = {
        # The deterministic prefix runs once per input, not per sample.
        "tile": ({batch_size}, {tiled}),
        "tile_inputs": ({tiled}, {tiled}),
        "loop": ({batch_size}, {batch_size}),
    }[strategy]
    assert (concrete(before.rows), concrete(after.rows)) == expected


def test_padding_of_the_last_chunk_does_not_leak_into_results():
    model = _model(rate=1e-9)
    x = _x(11)
    result = mc_predict(model, x, samples=2, batch_size=4)
    expected = harness.to_numpy(model(x, training=False))
    np.testing.assert_allclose(result.mean, expected, atol=1e-6)


def test_repeated_calls_draw_new_masks():
    model = _model(rate=0.5)
    a = mc_predict(model, _x(), samples=4).mean
    b = mc_predict(model, _x(), samples=4).mean
    assert not np.array_equal(a, b)


def test_a_batch_shared_mask_falls_back_to_separate_passes():
    model = _model(rate=0.5, noise_shape=(1, None))
    x = np.repeat(_x(1), 6, axis=0)
    result = mc_predict(model, x, samples=20, return_samples=True)
    s = result.samples
    # Within one sample all (identical) inputs share the mask ...
    np.testing.assert_allclose(s, np.broadcast_to(s[:, :1], s.shape))
    # ... and the mask differs between samples.
    assert result.variance.max() > 0


def test_multi_input_models_are_tiled_per_input():
    a, b = keras.Input((3,)), keras.Input((2,))
    h = keras.layers.Concatenate()([a, b])
    h = MCDropout(0.5, seed=0)(keras.layers.Dense(8)(h))
    model = keras.Model([a, b], keras.layers.Dense(2, "softmax")(h))
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(9, 3)), rng.normal(size=(9, 2))]
    x = [t.astype("float32") for t in x]
    result = mc_predict(model, x, samples=6, batch_size=4)
    assert result.mean.shape == (9, 2) and result.variance.max() > 0


def test_mixed_precision_results_are_float32():
    keras.config.set_dtype_policy("mixed_float16")
    model = _model()
    result = mc_predict(model, _x(), samples=4)
    assert result.mean.dtype == np.float32
    assert np.all(np.isfinite(result.entropy))


def test_cache_does_not_change_weights_or_saved_files():
    model = _model()
    count = len(model.weights)
    mc_predict(model, _x(), samples=3)
    assert len(model.weights) == count
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert len(loaded.weights) == count
    assert mc_predict(loaded, _x(), samples=3).mean.shape == (20, 3)


def test_a_model_with_no_stochastic_layer_is_an_error():
    inputs = keras.Input((6,))
    h = keras.layers.Dropout(0.5)(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, h)
    with pytest.raises(
        ValueError, match="no `MCDropout` layer.*with_mc_dropout"
    ):
        mc_predict(model, _x())
    with pytest.raises(ValueError, match="no `MCDropout` layer"):
        mc_predict(_model(rate=0.0), _x())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": 0}, "argument `samples`.*Received: samples=0"),
        ({"samples": 2.5}, "argument `samples`.*Received: samples=2.5"),
        ({"batch_size": 0}, "argument `batch_size`.*Received: batch_size=0"),
        (
            {"strategy": "vmap"},
            "argument `strategy`.*Received: strategy='vmap'",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mc_predict(_model(), _x(), **kwargs)


def test_bad_model_and_inputs():
    with pytest.raises(ValueError, match="argument `model`"):
        mc_predict("model", _x())
    with pytest.raises(ValueError, match="argument `x`"):
        mc_predict(_model(), None)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("return_samples", [False, True])
def test_empty_inputs_give_empty_results(strategy, return_samples):
    model = _model(outputs=4)
    result = mc_predict(
        model,
        _x(0),
        samples=5,
        return_samples=return_samples,
        strategy=strategy,
    )
    assert result.mean.shape == (0, 4) and result.variance.shape == (0, 4)
    assert result.entropy.shape == (0,)
    assert result.mutual_information.shape == (0,)
    assert result.mean.dtype == np.float32
    if return_samples:
        assert result.samples.shape == (5, 0, 4)
    else:
        assert result.samples is None


def test_empty_inputs_of_a_multi_input_model_give_empty_results():
    a, b = keras.Input((3,)), keras.Input((2,))
    h = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], MCDropout(0.5)(keras.layers.Dense(2)(h)))
    x = [np.zeros((0, 3), "float32"), np.zeros((0, 2), "float32")]
    assert mc_predict(model, x, samples=3).mean.shape == (0, 2)


@pytest.mark.parametrize("name", ["from_logits", "return_samples"])
@pytest.mark.parametrize("value", ["no", 1, 0, None])
def test_flags_take_bools_only(name, value):
    with pytest.raises(
        ValueError, match=f"argument `{name}`.*Received: {name}={value!r}"
    ):
        mc_predict(_model(), _x(), **{name: value})


@pytest.mark.parametrize(
    "name, value",
    [
        ("samples", float("inf")),
        ("samples", float("nan")),
        ("samples", True),
        ("samples", None),
        ("batch_size", float("inf")),
        ("batch_size", True),
        ("batch_size", "8"),
        ("strategy", True),
        ("strategy", None),
    ],
)
def test_non_finite_or_mistyped_arguments_are_refused(name, value):
    with pytest.raises(ValueError, match=f"argument `{name}`.*Received"):
        mc_predict(_model(), _x(), **{name: value})
