"""Tests for models.monte_carlo: mc_predict, MCPrediction, with_mc_dropout."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_regularize.layers import MCDropout
from keras_regularize.models import MCPrediction
from keras_regularize.models import mc_predict
from keras_regularize.models import with_mc_dropout
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


def test_results_are_the_exported_named_tuple():
    result = mc_predict(_model(), _x(), samples=3)
    assert isinstance(result, MCPrediction)
    mean, variance, entropy, mutual_information, samples = result
    assert mean is result.mean and entropy is result.entropy
    assert variance.shape == mean.shape == (20, 3)
    assert mutual_information.shape == (20,) and samples is None


# with_mc_dropout: converting a trained model.


def _functional():
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = keras.layers.SpatialDropout2D(0.3, name="spatial")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten()(h)
    inner = keras.Sequential(
        [keras.Input((256,)), keras.layers.Dense(6), keras.layers.Dropout(0.4)],
        name="inner",
    )
    h = inner(h)
    h = keras.layers.Dropout(0.2, noise_shape=(None, 1), seed=5, name="d")(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inputs, out)


def _images(n=4):
    return np.random.default_rng(0).normal(size=(n, 8, 8, 2)).astype("float32")


def _mc_layers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _mc_layers(layer)
        elif isinstance(layer, MCDropout):
            found.append(layer)
    return found


def test_every_dropout_is_converted_with_its_settings():
    model = _functional()
    mc = with_mc_dropout(model)
    by_name = {layer.name: layer for layer in _mc_layers(mc)}
    assert sorted(by_name) == ["d", "dropout", "spatial"]
    assert by_name["spatial"].rate == 0.3
    assert by_name["spatial"].noise_shape == (None, 1, 1, None)
    assert by_name["d"].noise_shape == (None, 1) and by_name["d"].seed == 5
    assert by_name["dropout"].rate == 0.4
    # The original keeps its plain Dropout layers.
    assert not _mc_layers(model)


def test_channels_first_spatial_dropout_keeps_its_mask_shape():
    inputs = keras.Input((2, 5, 5))
    h = keras.layers.SpatialDropout2D(0.5, data_format="channels_first")(inputs)
    mc = with_mc_dropout(keras.Model(inputs, h))
    assert _mc_layers(mc)[0].noise_shape == (None, None, 1, 1)
    y = harness.to_numpy(mc(np.ones((16, 2, 5, 5), "float32")))
    # Whole channels are dropped or kept.
    per_channel = y.reshape(16, 2, -1)
    assert np.all(per_channel.min(-1) == per_channel.max(-1))


def test_weights_are_shared_by_default():
    model = _functional()
    mc = with_mc_dropout(model)
    conv = model.get_layer("conv")
    assert mc.get_layer("conv") is conv
    assert mc.get_layer("inner").layers[0] is model.get_layer("inner").layers[0]
    mc_vars = {id(v) for v in mc.weights}
    assert all(id(v) in mc_vars for v in model.weights)
    # Training the original changes the MC model: same variables.
    conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))
    np.testing.assert_array_equal(
        harness.to_numpy(mc.get_layer("conv").kernel), 0.0
    )


def test_weights_are_copied_when_not_shared():
    model = _functional()
    mc = with_mc_dropout(model, share_weights=False)
    assert mc.get_layer("conv") is not model.get_layer("conv")
    for name in ("conv", "bn", "head"):
        for a, b in zip(
            model.get_layer(name).weights, mc.get_layer(name).weights
        ):
            assert a is not b
            np.testing.assert_array_equal(
                harness.to_numpy(a), harness.to_numpy(b)
            )
    kernel = model.get_layer("conv").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    assert np.any(harness.to_numpy(mc.get_layer("conv").kernel) != 0.0)


def test_mc_model_samples_at_inference_and_the_original_does_not():
    model = _functional()
    mc = with_mc_dropout(model)
    x = _images()
    a, b = (harness.to_numpy(mc(x, training=False)) for _ in range(2))
    assert not np.array_equal(a, b)
    c, d = (harness.to_numpy(model(x, training=False)) for _ in range(2))
    np.testing.assert_array_equal(c, d)


def test_mc_predict_on_the_converted_model_keeps_batch_norm():
    model = _functional()
    bn = model.get_layer("bn")
    for v in bn.non_trainable_weights:
        v.assign(np.random.default_rng(1).uniform(0.5, 1.5, v.shape))
    before = [harness.to_numpy(v).copy() for v in bn.non_trainable_weights]
    result = mc_predict(with_mc_dropout(model), _images(), samples=5)
    assert result.variance.max() > 0
    for a, v in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(a, harness.to_numpy(v))


def test_sequential_models_stay_sequential_and_save():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dropout(0.5)]
    )
    mc = with_mc_dropout(model)
    assert isinstance(mc, keras.Sequential)
    assert isinstance(mc.layers[-1], MCDropout)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mc.keras")
        mc.save(path)
        loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[-1], MCDropout)
    np.testing.assert_array_equal(
        harness.to_numpy(loaded.layers[0].kernel),
        harness.to_numpy(model.layers[0].kernel),
    )


def test_subclassed_models_are_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.drop = keras.layers.Dropout(0.5)

        def call(self, x):
            return self.drop(self.dense(x))

    net = Net()
    net(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="Sequential or Functional"):
        with_mc_dropout(net)
    with pytest.raises(ValueError, match="argument `model`"):
        with_mc_dropout(keras.layers.Dense(2))


def test_unreachable_or_unsupported_dropouts_are_named():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.drop = keras.layers.Dropout(0.5, name="hidden_drop")

        def call(self, x):
            return self.drop(x)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Block()(inputs))
    with pytest.raises(ValueError, match="'hidden_drop' \\(Dropout\\)"):
        with_mc_dropout(model)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.GaussianDropout(0.2, name="g")]
    )
    with pytest.raises(ValueError, match="'g' \\(GaussianDropout\\)"):
        with_mc_dropout(model)


@pytest.mark.parametrize("value", ["no", 1, 0, None])
def test_share_weights_takes_bools_only(value):
    with pytest.raises(
        ValueError,
        match=f"argument `share_weights`.*Received: share_weights={value!r}",
    ):
        with_mc_dropout(_functional(), share_weights=value)


def test_converted_layers_are_built_and_take_empty_batches():
    mc = with_mc_dropout(_functional())
    assert all(layer.built for layer in _mc_layers(mc))
    # (TensorFlow's Conv2D cannot run on 0 rows; mc_predict never runs the
    # model on an empty batch, so it answers on every backend.)
    assert mc_predict(mc, _images(0), samples=3).mean.shape == (0, 3)
