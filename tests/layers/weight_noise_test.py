"""Tests for keras_regularize.layers.WeightNoise."""

import keras
import numpy as np
import pytest

from keras_regularize.layers import WeightNoise
from tests import harness


def _dense(units=3, **kwargs):
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.GlorotUniform(seed=1),
        **kwargs,
    )


def _inner(layer, x):
    return layer.layer(x, training=False)


def test_contract_dense():
    harness.assert_layer_contract(
        WeightNoise,
        lambda: {"layer": _dense(), "stddev": 0.1},
        (5,),
        inference=_inner,
        output_shape=(3,),
    )


def test_contract_conv():
    harness.assert_layer_contract(
        WeightNoise,
        lambda: {
            "layer": keras.layers.Conv2D(
                2,
                3,
                padding="same",
                kernel_initializer=keras.initializers.HeNormal(seed=2),
            ),
            "stddev": 0.05,
        },
        (6, 6, 3),
        inference=_inner,
        output_shape=(6, 6, 2),
    )


def test_kernel_is_unchanged_at_inference_and_after_training_calls():
    layer = WeightNoise(_dense(4), stddev=0.5, seed=0)
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    layer(x)
    kernel = harness.to_numpy(layer.layer.kernel).copy()
    np.testing.assert_array_equal(
        harness.to_numpy(layer(x, training=False)),
        harness.to_numpy(layer.layer(x)),
    )
    noisy = harness.to_numpy(layer(x, training=True))
    assert not np.allclose(noisy, harness.to_numpy(layer.layer(x)))
    np.testing.assert_array_equal(harness.to_numpy(layer.layer.kernel), kernel)


def test_noise_has_the_configured_variance_and_only_hits_the_kernel():
    stddev, fan_in, units = 0.3, 40, 50
    layer = WeightNoise(
        _dense(units, bias_initializer="ones"), stddev=stddev, seed=3
    )
    eye = np.eye(fan_in, dtype="float32")
    clean = harness.to_numpy(layer(eye, training=False))
    draws = np.stack(
        [harness.to_numpy(layer(eye, training=True)) - clean for _ in range(4)]
    )
    # With identity inputs, row i of the output is kernel row i + bias, so
    # the difference is exactly the kernel noise: fresh every call.
    assert not np.allclose(draws[0], draws[1])
    noise = draws.ravel().astype("float64")
    n = noise.size  # 8,000 draws
    assert abs(noise.mean()) < 4 * stddev / np.sqrt(n)
    # Sample variance of n normals: relative SD sqrt(2 / n).
    assert abs(noise.var() / stddev**2 - 1.0) < 4 * np.sqrt(2.0 / n)


def test_zero_stddev_is_the_wrapped_layer():
    layer = WeightNoise(_dense(), stddev=0.0)
    x = np.ones((2, 5), "float32")
    np.testing.assert_array_equal(
        harness.to_numpy(layer(x, training=True)),
        harness.to_numpy(layer.layer(x)),
    )


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_stddev_changes_take_effect_inside_a_compiled_step(jit):
    # One compiled train function, learning rate 0: the loss varies between
    # steps only while the noise variable is non-zero.
    inputs = keras.Input((5,))
    wrapped = WeightNoise(_dense(2), stddev=0.0, seed=0)
    model = keras.Model(inputs, wrapped(inputs))
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit)
    x = np.random.default_rng(1).normal(size=(16, 5)).astype("float32")
    y = np.ones((16, 2), "float32")

    def losses():
        return [float(model.train_on_batch(x, y)) for _ in range(4)]

    assert len(set(losses())) == 1
    wrapped.stddev = 0.5
    assert float(harness.to_numpy(wrapped.stddev_variable)) == 0.5
    assert len(set(losses())) == 4
    wrapped.stddev = 0.0
    assert len(set(losses())) == 1
    with pytest.raises(ValueError, match="Received: stddev=-1"):
        wrapped.stddev = -1


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_training_updates_kernel_and_bias(jit):
    inputs = keras.Input((5,))
    wrapped = WeightNoise(_dense(2), stddev=0.1, seed=0)
    model = keras.Model(inputs, wrapped(inputs))
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit)
    before = [harness.to_numpy(w).copy() for w in wrapped.layer.weights]
    x = np.random.default_rng(1).normal(size=(16, 5)).astype("float32")
    model.fit(x, np.ones((16, 2), "float32"), epochs=2, verbose=0)
    after = [harness.to_numpy(w) for w in wrapped.layer.weights]
    assert len(after) == 2
    for a, b in zip(before, after):
        assert not np.allclose(a, b), "a weight of the wrapped layer froze"


def test_activity_regularizer_of_the_wrapped_layer_counts_once():
    layer = WeightNoise(
        _dense(activity_regularizer=keras.regularizers.L2(1.0)), stddev=0.1
    )
    inputs = keras.Input((5,))
    model = keras.Model(inputs, layer(inputs))
    model(np.ones((2, 5), "float32"), training=True)
    assert len(model.losses) == 1


def test_config_nests_the_wrapped_layer():
    layer = WeightNoise(_dense(7), stddev=0.2, seed=4)
    config = layer.get_config()
    assert config["layer"]["class_name"] == "Dense"
    assert config["stddev"] == 0.2 and config["seed"] == 4
    restored = WeightNoise.from_config(config)
    assert restored.layer.units == 7 and restored.stddev == 0.2


def test_layers_without_a_kernel_are_rejected():
    embedding = keras.layers.Embedding(10, 4)
    layer = WeightNoise(embedding, stddev=0.1)
    with pytest.raises(ValueError, match="`kernel` variable.*Embedding"):
        layer(np.zeros((2, 3), "int32"))
    norm = keras.layers.LayerNormalization()
    norm.build((None, 4))
    with pytest.raises(
        ValueError, match="argument `layer`.*LayerNormalization"
    ):
        WeightNoise(norm, stddev=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stddev": -0.1}, "argument `stddev`.*Received: stddev=-0.1"),
        ({"stddev": "1"}, "argument `stddev`.*Received: stddev='1'"),
        ({"stddev": 0.1, "seed": -2}, "argument `seed`.*Received: seed=-2"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightNoise(_dense(), **kwargs)


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), True, None]
)
def test_non_finite_or_non_numeric_stddevs_are_refused(value):
    with pytest.raises(
        ValueError, match="argument `stddev`.*Received: stddev="
    ):
        WeightNoise(_dense(), stddev=value)
    layer = WeightNoise(_dense(), stddev=0.1)
    with pytest.raises(
        ValueError, match="argument `stddev`.*Received: stddev="
    ):
        layer.stddev = value
    assert layer.stddev == 0.1
    assert float(harness.to_numpy(layer.stddev_variable)) == pytest.approx(0.1)


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_empty_batch_gives_an_empty_output(jit):
    layer = WeightNoise(_dense(3), stddev=0.1, seed=0)
    x = np.zeros((0, 5), "float32")
    for training in (True, False):
        assert harness.to_numpy(layer(x, training=training)).shape == (0, 3)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=jit)
    assert model.predict_on_batch(x).shape == (0, 3)


def test_integer_inputs_behave_as_in_the_wrapped_layer():
    # The noise perturbs the float kernel, not the inputs: nothing is
    # rescaled or truncated, so integer inputs that Dense promotes to float
    # stay valid. Outputs are float, exact at inference, noisy in training.
    layer = WeightNoise(_dense(3), stddev=0.5, seed=0)
    x = np.arange(10, dtype="int32").reshape(2, 5)
    plain = harness.to_numpy(layer.layer(x))
    np.testing.assert_array_equal(harness.to_numpy(layer(x)), plain)
    noisy = harness.to_numpy(layer(x, training=True))
    assert noisy.dtype == np.float32 and np.all(np.isfinite(noisy))
    assert not np.allclose(noisy, plain)
