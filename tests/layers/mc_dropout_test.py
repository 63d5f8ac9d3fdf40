"""Tests for keras_regularize.layers.MCDropout."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_regularize.layers import MCDropout
from tests import harness


def _same_seed_first_draw(kwargs):
    # At inference the layer still samples: its first output equals the
    # first output of a fresh twin with the same seed.
    return lambda layer, x: MCDropout(**kwargs)(x, training=False)


@pytest.mark.parametrize(
    "shape, noise_shape",
    [((6,), None), ((5, 3), None), ((5, 3), (None, 1, None))],
)
def test_contract(shape, noise_shape):
    kwargs = {"rate": 0.4, "noise_shape": noise_shape, "seed": 3}
    harness.assert_layer_contract(
        MCDropout, kwargs, shape, inference=_same_seed_first_draw(kwargs)
    )


def test_drops_at_rate_and_keeps_the_mean_at_inference():
    rate, n = 0.3, 20000
    y = harness.to_numpy(
        MCDropout(rate, seed=1)(np.ones((n, 1), "float32"), training=False)
    ).ravel()
    dropped = y == 0.0
    assert np.all(dropped | np.isclose(y, 1.0 / (1.0 - rate)))
    assert harness.binomial_ok(dropped.sum(), n, rate)
    sd = np.sqrt(rate / (1.0 - rate) / n)
    assert abs(y.mean() - 1.0) < 4 * sd


@pytest.mark.parametrize("training", [False, None])
def test_differs_between_calls_at_inference_unlike_keras_dropout(training):
    x = np.ones((8, 32), "float32")
    mc = MCDropout(0.5, seed=0)
    a, b = (harness.to_numpy(mc(x, training=training)) for _ in range(2))
    assert not np.array_equal(a, b)
    plain = keras.layers.Dropout(0.5, seed=0)
    c, d = (harness.to_numpy(plain(x, training=training)) for _ in range(2))
    np.testing.assert_array_equal(c, x)
    np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_predict_samples_inside_compiled_functions(jit):
    inputs = keras.Input((16,))
    model = keras.Model(inputs, MCDropout(0.5, seed=2)(inputs))
    model.compile(jit_compile=jit)
    x = np.ones((4, 16), "float32")
    a = model.predict(x, verbose=0)
    b = model.predict(x, verbose=0)
    assert not np.array_equal(a, b)
    assert set(np.unique(a).tolist()) <= {0.0, 2.0}


def test_noise_shape_shares_the_mask_over_none_free_axes():
    x = np.ones((64, 5, 7), "float32")
    y = harness.to_numpy(MCDropout(0.5, noise_shape=(None, 1, None), seed=4)(x))
    # One decision per (sample, feature), repeated over axis 1.
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))
    assert 0.0 < (y == 0.0).mean() < 1.0


def test_rate_zero_is_the_identity():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_array_equal(harness.to_numpy(MCDropout(0.0)(x)), x)


def test_weights_trained_with_keras_dropout_load_into_mc_dropout():
    def build(dropout):
        inputs = keras.Input((6,))
        h = keras.layers.Dense(8, name="hidden")(inputs)
        h = dropout(0.2, name="drop")(h)
        return keras.Model(inputs, keras.layers.Dense(2, name="head")(h))

    trained = build(keras.layers.Dropout)
    mc = build(MCDropout)
    assert len(mc.weights) == len(trained.weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.weights.h5")
        trained.save_weights(path)
        mc.load_weights(path)
    for a, b in zip(trained.weights, mc.weights):
        np.testing.assert_array_equal(harness.to_numpy(a), harness.to_numpy(b))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate": 1.0}, "argument `rate`.*Received: rate=1.0"),
        ({"rate": -0.1}, "argument `rate`.*Received: rate=-0.1"),
        ({"rate": 0.1, "seed": -1}, "argument `seed`.*Received: seed=-1"),
        (
            {"rate": 0.1, "noise_shape": (None, 0)},
            r"argument `noise_shape`.*Received: noise_shape=\(None, 0\)",
        ),
        (
            {"rate": 0.1, "noise_shape": 3},
            "argument `noise_shape`.*Received: noise_shape=3",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MCDropout(**kwargs)


def test_noise_shape_of_the_wrong_rank_is_rejected_at_the_first_call():
    layer = MCDropout(0.1, noise_shape=(None, 1))
    with pytest.raises(ValueError, match="Expected a tuple of length 3"):
        layer(np.ones((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="Expected a tuple of length 3"):
        MCDropout(0.1, noise_shape=(None, 1))(keras.Input((3, 4)))


def test_rate_cannot_be_changed_after_construction():
    # A Python float is baked into compiled functions; a later assignment
    # would be ignored there, so it is refused with the value received.
    layer = MCDropout(0.2)
    with pytest.raises(AttributeError, match="Received: rate=0.5"):
        layer.rate = 0.5
    assert layer.rate == 0.2 and layer.get_config()["rate"] == 0.2


def test_built_after_construction_like_keras_dropout():
    # No weights to create: built at once, as keras.layers.Dropout is.
    assert keras.layers.Dropout(0.5).built
    layer = MCDropout(0.5, noise_shape=(None, 1, None), seed=0)
    assert layer.built and not layer.weights
    y = layer(np.ones((2, 3, 4), "float32"))
    assert tuple(y.shape) == (2, 3, 4)


def test_keras_run_layer_test_cross_check():
    from keras.src.testing import test_case

    test_case.TestCase().run_layer_test(
        MCDropout,
        init_kwargs={"rate": 0.2, "seed": 1},
        input_shape=(2, 3),
        call_kwargs={"training": True},
        expected_output_shape=(2, 3),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        expected_num_seed_generators=1,
        expected_num_losses=0,
        supports_masking=True,
        assert_built_after_instantiation=True,
        # Outputs are random even at inference, by design.
        run_training_check=False,
    )


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_integer_inputs_are_refused_naming_the_layer_and_dtype(dtype):
    message = f"`MCDropout`.*floating-point.*dtype={dtype}"
    for rate in (0.5, 0.0):
        with pytest.raises(ValueError, match=message):
            MCDropout(rate)(np.ones((4, 3), dtype))
    with pytest.raises(ValueError, match=message):
        MCDropout(0.5)(keras.Input((3,), dtype=dtype))


@pytest.mark.parametrize("noise_shape", [None, (None, 1), (1, None)])
@pytest.mark.parametrize("jit", harness.jit_modes())
def test_empty_batch_gives_an_empty_output(noise_shape, jit):
    layer = MCDropout(0.5, noise_shape=noise_shape, seed=0)
    x = np.zeros((0, 4), "float32")
    assert harness.to_numpy(layer(x)).shape == (0, 4)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=jit)
    assert model.predict_on_batch(x).shape == (0, 4)


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), True, "0.1", None]
)
def test_non_finite_or_non_numeric_rates_are_refused(value):
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        MCDropout(value)


@pytest.mark.parametrize("value", [0.3, float("inf"), True, "0.1"])
def test_rate_assignment_is_refused_whatever_the_value(value):
    layer = MCDropout(0.2)
    with pytest.raises(AttributeError, match="fixed at construction"):
        layer.rate = value
    assert layer.rate == 0.2
