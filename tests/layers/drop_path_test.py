"""Tests for keras_regularize.layers.DropPath."""

import keras
import numpy as np
import pytest

from keras_regularize.layers import DropPath
from tests import harness


@pytest.mark.parametrize("shape", [(6,), (5, 3), (4, 4, 3)])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_contract(shape, mode):
    harness.assert_layer_contract(DropPath, {"rate": 0.4, "mode": mode}, shape)


def test_row_mode_drops_whole_samples_at_rate():
    rate, n = 0.25, 4000
    x = np.ones((n, 5, 3), "float32")
    y = harness.to_numpy(DropPath(rate, seed=1)(x, training=True))
    per_sample = y.reshape(n, -1)
    dropped = np.all(per_sample == 0.0, axis=1)
    kept = np.all(per_sample == np.float32(1.0 / (1.0 - rate)), axis=1)
    assert np.all(dropped | kept), "a sample was partly dropped"
    assert harness.binomial_ok(dropped.sum(), n, rate)
    # Inverted scaling keeps the mean: E[y] = 1.
    sd = np.sqrt(rate / (1 - rate) / n)
    assert abs(per_sample[:, 0].mean() - 1.0) < 4 * sd


def test_batch_mode_keeps_or_drops_the_whole_batch():
    layer = DropPath(0.5, mode="batch", seed=3)
    x = np.ones((8, 4), "float32")
    dropped = 0
    calls = 400
    for _ in range(calls):
        y = harness.to_numpy(layer(x, training=True))
        assert np.all(y == 0.0) or np.all(y == 2.0)
        dropped += int(np.all(y == 0.0))
    assert harness.binomial_ok(dropped, calls, 0.5)


def test_without_scaling_kept_samples_are_unchanged():
    x = np.random.default_rng(0).normal(size=(256, 3)).astype("float32")
    y = harness.to_numpy(
        DropPath(0.5, scale_by_keep=False, seed=0)(x, training=True)
    )
    for row_x, row_y in zip(x, y):
        assert np.all(row_y == 0.0) or np.array_equal(row_x, row_y)


def test_gradients_reach_only_kept_samples():
    rate = 0.5
    layer = DropPath(rate, seed=4)
    x = np.random.default_rng(1).normal(size=(512, 6)).astype("float32")
    grad = harness.gradient(lambda t: layer(t, training=True), x)
    zero = np.all(grad == 0.0, axis=1)
    scaled = np.allclose(grad, 1.0 / (1.0 - rate), rtol=0, atol=1e-6)
    per_row_scaled = np.all(np.isclose(grad, 2.0, atol=1e-6), axis=1)
    assert not scaled and np.all(zero | per_row_scaled)
    assert harness.binomial_ok(zero.sum(), 512, rate)


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_rate_changed_by_a_callback_applies_inside_compiled_steps(jit):
    layer = DropPath(0.0, mode="batch", seed=0)
    inputs = keras.Input((4,))
    head = keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)
    model = keras.Model(inputs, head(layer(inputs)))
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit)
    x = np.ones((64, 4), "float32")
    y = np.zeros((64, 1), "float32")

    class Ramp(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            layer.rate = [0.0, 0.99][epoch]

    losses = model.fit(
        x, y, batch_size=64, epochs=2, verbose=0, callbacks=[Ramp()]
    ).history["loss"]
    assert losses[0] == pytest.approx(16.0)  # sum of four ones, squared
    # At rate 0.99 the single-batch mask is almost surely 0 (loss 0) and
    # otherwise 100x larger; either way not the rate-0 loss.
    assert losses[1] != pytest.approx(16.0)
    assert layer.rate == 0.99
    assert float(harness.to_numpy(layer.rate_variable)) == pytest.approx(0.99)


def test_identity_at_inference_and_masks_pass_through():
    layer = DropPath(0.5)
    assert layer.supports_masking
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(harness.to_numpy(layer(x)), x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate": 1.0}, "argument `rate`.*Received: rate=1.0"),
        ({"rate": -0.1}, "argument `rate`.*Received: rate=-0.1"),
        ({"rate": "0.1"}, "argument `rate`.*Received: rate='0.1'"),
        ({"mode": "col"}, "argument `mode`.*Received: mode='col'"),
        ({"seed": -1}, "argument `seed`.*Received: seed=-1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropPath(**kwargs)


def test_bad_rate_assignment_keeps_the_old_rate():
    layer = DropPath(0.2)
    with pytest.raises(ValueError, match="Received: rate=1.5"):
        layer.rate = 1.5
    assert layer.rate == 0.2


def test_rank_one_input_is_rejected():
    with pytest.raises(ValueError, match=r"rank >= 2.*Received: shape"):
        DropPath(0.1)(np.ones((4,), "float32"))


def test_keras_run_layer_test_cross_check():
    from keras.src.testing import test_case

    test_case.TestCase().run_layer_test(
        DropPath,
        init_kwargs={"rate": 0.3, "seed": 1},
        input_shape=(2, 3, 4),
        expected_output_shape=(2, 3, 4),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
        expected_num_seed_generators=1,
        supports_masking=True,
    )
