"""Tests for keras_regularize.optimizers.GradientNoise."""

import json

import keras
import numpy as np
import pytest

from keras_regularize.callbacks import GradientNormLogger
from keras_regularize.optimizers import GradientClipping
from keras_regularize.optimizers import GradientNoise
from tests import harness
from tests.optimizers import helpers

JIT = harness.jit_modes()
# Compiling is cheaper than eager steps on JAX, dearer on TensorFlow.
FAST_JIT = harness.BACKEND == "jax"


def _zero_gradient_loss(y_true, y_pred):
    # Exactly zero gradients, so a step of SGD(1.0) moves the weights by
    # minus the injected noise and nothing else.
    return keras.ops.mean(y_pred) * 0.0


def _noise_of_one_step(step, jit, eta, gamma, seed=0):
    d, k = 200, 100  # 20,000 kernel entries
    model = keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(k, use_bias=False, kernel_initializer="zeros"),
        ]
    )
    opt = GradientNoise(keras.optimizers.SGD(1.0), eta, gamma, seed=seed)
    model.compile(optimizer=opt, loss=_zero_gradient_loss, jit_compile=jit)
    opt.iterations.assign(step)
    before = harness.to_numpy(model.weights[0])
    x = np.ones((2, d), "float32")
    model.train_on_batch(x, np.zeros((2, k), "float32"))
    assert int(opt.iterations.numpy()) == step + 1
    return (before - harness.to_numpy(model.weights[0])).ravel()


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("step", [0, 1000])
def test_noise_variance_follows_the_annealing_schedule(step, jit):
    eta, gamma = 0.3, 0.55
    noise = _noise_of_one_step(step, jit, eta, gamma).astype("float64")
    n = noise.size
    expected = eta / (1.0 + step) ** gamma
    # The sample variance of n normals has relative SD sqrt(2 / n).
    assert abs(noise.var() / expected - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(noise.mean()) < 5 * np.sqrt(expected / n)
    # The other step's variance is far outside the band: the test can fail.
    other = eta / (1.0 + (1000 - step)) ** gamma
    assert abs(noise.var() / other - 1.0) > 10 * np.sqrt(2.0 / n)


def test_same_seed_same_noise_other_seed_other_noise():
    def noise(seed):
        opt = GradientNoise(keras.optimizers.SGD(1.0), 0.1, seed=seed)
        v = keras.Variable(np.zeros(1000, "float32"))
        opt.apply([keras.ops.zeros(1000)], [v])
        opt.apply([keras.ops.zeros(1000)], [v])  # the stream moves on
        return harness.to_numpy(v)

    a, b, c = noise(4), noise(4), noise(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("jit", JIT)
def test_zero_eta_trains_bit_for_bit_like_the_wrapped_optimizer(jit):
    x, y = helpers.data()
    a, b = helpers.mlp(), helpers.mlp()
    a.compile(
        optimizer=GradientNoise(keras.optimizers.Adam(0.01), eta=0.0, seed=1),
        loss="mse",
        jit_compile=jit,
    )
    b.compile(
        optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=jit
    )
    for step in range(2):
        a.train_on_batch(x[4 * step : 4 * step + 8], y[4 * step : 4 * step + 8])
        b.train_on_batch(x[4 * step : 4 * step + 8], y[4 * step : 4 * step + 8])
        for wa, wb in zip(helpers.weights(a), helpers.weights(b)):
            np.testing.assert_array_equal(wa, wb, err_msg=f"step {step}")


def test_eta_set_from_outside_reaches_compiled_steps():
    x, y = helpers.data()
    a, b = helpers.mlp(), helpers.mlp()
    opt = GradientNoise(keras.optimizers.SGD(0.1), eta=1.0, seed=2)
    a.compile(optimizer=opt, loss="mse", jit_compile=JIT[-1])
    b.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    a.train_on_batch(x, y)  # noisy step: weights part ways
    b.set_weights(a.get_weights())
    opt.eta = 0.0
    a.train_on_batch(x, y)
    b.train_on_batch(x, y)
    for wa, wb in zip(helpers.weights(a), helpers.weights(b)):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    assert opt.get_config()["eta"] == 0.0


def test_composes_with_loss_scale_and_with_gradient_clipping():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = helpers.data()
    model = helpers.mlp()
    clipping = GradientClipping(keras.optimizers.SGD(0.01), threshold=1.0)
    noise = GradientNoise(clipping, eta=0.01, seed=0)
    model.compile(optimizer=noise, loss="mse", jit_compile=JIT[-1])
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(
        x,
        y,
        batch_size=4,
        epochs=2,
        verbose=0,
        callbacks=[GradientNormLogger()],
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(history.history["grad_norm"]))
    assert noise.iterations is clipping.optimizer.iterations


def test_config_round_trip_and_bad_arguments():
    opt = GradientNoise(keras.optimizers.RMSprop(0.002), 0.2, 0.6, seed=3)
    config = opt.get_config()
    json.dumps(config)
    assert GradientNoise.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(opt)
    )
    assert type(restored) is GradientNoise
    assert restored.get_config() == config
    with pytest.raises(ValueError, match="`eta`. Expected a finite number >="):
        GradientNoise(keras.optimizers.SGD(), eta=-0.1)
    with pytest.raises(ValueError, match="Received: eta=-0.1"):
        opt.eta = -0.1
    with pytest.raises(ValueError, match="Received: gamma=-1"):
        GradientNoise(keras.optimizers.SGD(), gamma=-1)
    with pytest.raises(ValueError, match="Received: seed=-1"):
        GradientNoise(keras.optimizers.SGD(), seed=-1)
    with pytest.raises(ValueError, match="Expected a `keras.optimizers.Opt"):
        GradientNoise(keras.layers.Dense(1))


@pytest.mark.parametrize("name", ["eta", "gamma"])
@pytest.mark.parametrize(
    "value", [float("inf"), -float("inf"), float("nan"), True, "0.1", None]
)
def test_non_finite_and_non_number_eta_and_gamma_are_refused(name, value):
    with pytest.raises(ValueError, match=f"argument `{name}`") as info:
        GradientNoise(keras.optimizers.SGD(), **{name: value})
    message = str(info.value)
    assert f"{name}={value!r}" in message
    assert "inf]" not in message and "inf)" not in message
    if name == "eta":
        opt = GradientNoise(keras.optimizers.SGD(), eta=0.1)
        with pytest.raises(ValueError, match="argument `eta`"):
            opt.eta = value
        assert opt.eta == 0.1
        assert float(opt.eta_variable.numpy()) == pytest.approx(0.1)


def test_compiled_model_saves_and_loads_with_its_optimizer():
    x, y = helpers.data()
    model = helpers.mlp()
    opt = GradientNoise(keras.optimizers.SGD(0.01, momentum=0.9), seed=6)
    model.compile(optimizer=opt, loss="mse", jit_compile=FAST_JIT)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    loaded = helpers.save_and_load(model)
    assert type(loaded.optimizer) is GradientNoise
    assert loaded.optimizer.get_config() == opt.get_config()
    for a, b in zip(
        helpers.optimizer_values(opt),
        helpers.optimizer_values(loaded.optimizer),
    ):
        np.testing.assert_array_equal(a, b)  # RNG state included
    # Same state, same next step.
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for wa, wb in zip(helpers.weights(model), helpers.weights(loaded)):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
