"""Tests for keras_regularize.models.with_mc_dropout."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_regularize.layers import MCDropout
from keras_regularize.models import mc_predict
from keras_regularize.models import with_mc_dropout
from tests import harness


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


def _x(n=4):
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
    x = _x()
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
    result = mc_predict(with_mc_dropout(model), _x(), samples=5)
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
    assert mc_predict(mc, _x(0), samples=3).mean.shape == (0, 3)
