"""The optimizer wrappers under `gradient_accumulation_steps`."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_regularize.callbacks.gradient_norm_logger import GradientNormLogger
from keras_regularize.optimizers import GradientClipping
from keras_regularize.optimizers import GradientNoise
from tests import harness
from tests.optimizers import helpers

JIT = harness.jit_modes()[-1]


def _sgd(k=None, **kwargs):
    return keras.optimizers.SGD(0.1, gradient_accumulation_steps=k, **kwargs)


@pytest.mark.parametrize("where", ["inner", "wrapper"])
def test_global_norm_equals_keras_global_clipnorm_with_accumulation(where):
    inner = _sgd(2 if where == "inner" else None, momentum=0.9)
    ours = GradientClipping(inner, threshold=0.5)
    if where == "wrapper":
        ours.gradient_accumulation_steps = 2
    assert ours.gradient_accumulation_steps == 2
    reference = _sgd(2, momentum=0.9, global_clipnorm=0.5)
    x, y = helpers.data()
    a, b = helpers.mlp(), helpers.mlp()
    a.compile(optimizer=ours, loss="mse", jit_compile=JIT)
    b.compile(optimizer=reference, loss="mse", jit_compile=JIT)
    for step in range(4):
        batch = slice(4 * step, 4 * step + 4)
        a.train_on_batch(x[batch], y[batch])
        b.train_on_batch(x[batch], y[batch])
        for wa, wb in zip(helpers.weights(a), helpers.weights(b)):
            np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    # Once per applied update, and the threshold was binding.
    assert int(ops.convert_to_numpy(ours.step_count)) == 2
    assert int(ops.convert_to_numpy(ours.clip_count)) == 2
    assert int(ops.convert_to_numpy(ours.iterations)) == 2


def _clip_reference(method, mean, weight, threshold):
    if method == "global_norm":
        norm = np.linalg.norm(mean)
        return mean * min(1.0, threshold / norm)
    if method == "value":
        return np.clip(mean, -threshold, threshold)
    if method == "agc":
        g_norm = np.linalg.norm(mean, axis=0)
        limit = threshold * np.maximum(np.linalg.norm(weight, axis=0), 1e-3)
        return mean * np.where(g_norm > limit, limit / g_norm, 1.0)
    return mean  # "auto" with one norm seen, "none"


@pytest.mark.parametrize(
    "method, threshold",
    [
        ("global_norm", 1.0),
        ("value", 0.3),
        ("agc", 0.05),
        ("auto", None),
        ("none", None),
    ],
)
def test_every_method_acts_once_on_the_mean_of_k_gradients(method, threshold):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2)).astype("float32")
    grads = [rng.normal(size=(3, 2)).astype("float32") for _ in range(3)]
    opt = GradientClipping(
        keras.optimizers.SGD(1.0, gradient_accumulation_steps=3),
        method=method,
        threshold=threshold,
    )
    w = keras.Variable(w0)
    for i, g in enumerate(grads):
        opt.apply([ops.convert_to_tensor(g)], [w])
        if i < 2:  # accumulating: nothing applied, nothing recorded
            np.testing.assert_array_equal(ops.convert_to_numpy(w), w0)
            assert opt.norm_statistics()["steps"] == 0
    mean = np.mean(np.stack(grads).astype("float64"), axis=0)
    expected = w0 - _clip_reference(method, mean, w0, threshold)
    np.testing.assert_allclose(
        ops.convert_to_numpy(w), expected, rtol=1e-5, atol=1e-6
    )
    stats = opt.norm_statistics()
    assert stats["steps"] == 1
    np.testing.assert_allclose(stats["grad_norm"], np.linalg.norm(mean), 1e-5)
    if method == "auto":
        assert int(ops.convert_to_numpy(opt.history_count)) == 1


def test_noise_is_added_once_per_update_to_the_mean():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4,)).astype("float32")
    grads = [rng.normal(size=(4,)).astype("float32") for _ in range(4)]
    opt = GradientNoise(keras.optimizers.SGD(1.0), eta=0.5, gamma=0.55, seed=3)
    opt.gradient_accumulation_steps = 2  # set on the wrapper
    w = keras.Variable(w0)
    reference = keras.random.SeedGenerator(3)
    expected = w0.astype("float64")
    for update in range(2):
        pair = grads[2 * update : 2 * update + 2]
        for g in pair:
            opt.apply([ops.convert_to_tensor(g)], [w])
        noise = keras.random.normal((4,), seed=reference)
        stddev = np.sqrt(0.5 / (1.0 + update) ** 0.55)
        mean = np.mean(np.stack(pair).astype("float64"), axis=0)
        expected = expected - (mean + stddev * ops.convert_to_numpy(noise))
        np.testing.assert_allclose(
            ops.convert_to_numpy(w), expected, rtol=1e-5, atol=1e-6
        )
    # The RNG advanced once per update, as the reference generator did.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(opt.seed_generator.state),
        ops.convert_to_numpy(reference.state),
    )


def test_logged_norm_is_the_accumulated_one():
    # Two micro-batches of 4 accumulated (mean) = one batch of 8.
    x, y = helpers.data(n=16)
    accumulated = GradientClipping(_sgd(2), method="none")
    whole = GradientClipping(_sgd(), method="none")
    logs = []
    for opt, batch in ((accumulated, 4), (whole, 8)):
        model = helpers.mlp()
        model.compile(optimizer=opt, loss="mse", jit_compile=JIT)
        history = model.fit(
            x,
            y,
            batch_size=batch,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[GradientNormLogger()],
        )
        logs.append((history.history, helpers.weights(model)))
    (h_acc, w_acc), (h_whole, w_whole) = logs
    np.testing.assert_allclose(h_acc["grad_norm"], h_whole["grad_norm"], 1e-5)
    np.testing.assert_allclose(
        h_acc["grad_norm_max"], h_whole["grad_norm_max"], 1e-5
    )
    assert accumulated.norm_statistics()["steps"] == 2
    for a, b in zip(w_acc, w_whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_contradictory_or_late_settings_are_rejected():
    opt = GradientClipping(_sgd(2))
    opt.gradient_accumulation_steps = 2  # the same value: fine
    with pytest.raises(ValueError, match="set it on one of them"):
        opt.gradient_accumulation_steps = 3
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        GradientNoise(_sgd()).gradient_accumulation_steps = 1
    built = GradientNoise(_sgd())
    built.build([keras.Variable(np.zeros(2, "float32"))])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        built.gradient_accumulation_steps = 2
    nested = GradientNoise(GradientClipping(_sgd()))
    nested.gradient_accumulation_steps = 4
    assert nested.optimizer.optimizer.gradient_accumulation_steps == 4
