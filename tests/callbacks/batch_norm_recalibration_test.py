"""Tests for keras_regularize.callbacks._batch_norm_recalibration."""

import keras
import numpy as np
import pytest

from keras_regularize.callbacks._batch_norm_recalibration import (
    BatchNormRecalibration,
)
from keras_regularize.callbacks._batch_norm_recalibration import (
    batch_norm_layers,
)
from tests.harness import jit_modes

N = 48


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N, 5)) * 2.0 + 1.0).astype("float32")


class Counter(keras.layers.Layer):
    """Identity that counts its eager calls (one per batch)."""

    calls = 0

    def call(self, x):
        Counter.calls += 1
        return x


def _model(jit_compile="auto", run_eagerly=False):
    """Two trainable BN layers, the second in a nested block on 4-D input,
    dropout between them, and a frozen BN layer after them."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(12)(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.9, seed=3)(h)
    block = keras.Sequential(
        [
            keras.Input((12,)),
            Counter(),
            keras.layers.Dense(12),
            keras.layers.Reshape((2, 2, 3)),
            keras.layers.BatchNormalization(name="bn2", momentum=0.5),
        ],
        name="block",
    )
    h = keras.layers.Flatten()(block(h))
    frozen = keras.layers.BatchNormalization(name="frozen")
    h = frozen(h)
    outputs = keras.layers.Dense(1)(h)
    model = keras.Model(inputs, outputs)
    frozen.trainable = False
    model.compile(
        optimizer="sgd",
        loss="mse",
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
    # Moving statistics far from the data's, so a pass that left them
    # alone would show.
    for layer in model.layers + block.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 5.0))
            layer.moving_variance.assign(
                np.full(layer.moving_variance.shape, 9.0)
            )
    return model


def _bn(model, name):
    if name == "bn2":
        return model.get_layer("block").get_layer(name)
    return model.get_layer(name)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _stats(a, channel_axis=-1):
    a = np.asarray(a, "float64")
    a = np.moveaxis(a, channel_axis, -1).reshape(-1, a.shape[channel_axis])
    return a.mean(axis=0), a.var(axis=0)


def _inference_inputs(model, x):
    """Each BN layer's inputs at inference (dropout off), current weights."""
    bn1 = model.get_layer("bn1")
    block = model.get_layer("block")
    first = keras.Model(model.inputs, bn1.input)(x, training=False)
    h = keras.Model(model.inputs, block.input)(x, training=False)
    inner = keras.Model(block.inputs, block.get_layer("bn2").input)
    second = inner(h, training=False)
    return _np(first), _np(second)


def _bn1_batch_normalized_then_bn2_inputs(model, x, batch):
    """bn2's inputs when bn1 normalizes every batch by its own moments."""
    bn1 = model.get_layer("bn1")
    block = model.get_layer("block")
    pre = _np(keras.Model(model.inputs, bn1.input)(x, training=False))
    pre = pre.astype("float64")
    gamma, beta = (np.asarray(w, "float64") for w in (bn1.gamma, bn1.beta))
    outs = []
    for start in range(0, len(x), batch):
        part = pre[start : start + batch]
        mean, var = part.mean(0), part.var(0)
        outs.append((part - mean) / np.sqrt(var + bn1.epsilon) * gamma + beta)
    h = np.maximum(np.concatenate(outs), 0.0).astype("float32")
    inner = keras.Model(block.inputs, block.get_layer("bn2").input)
    return _np(inner(h, training=False))


@pytest.fixture(scope="module", params=jit_modes()[-1:])
def one_batch(request):
    """Recalibrated with all the data in one batch (compiled pass)."""
    model = _model(jit_compile=request.param)
    x = _data()
    frozen = [np.array(w) for w in model.get_layer("frozen").weights]
    Counter.calls = 0
    results = BatchNormRecalibration(model).run(x, batch_size=N)
    return model, x, results, frozen


def test_finds_trainable_batch_norm_layers_at_any_depth():
    names = [layer.name for layer in batch_norm_layers(_model())]
    assert names == ["bn1", "bn2"]


def test_one_batch_each_layer_gets_its_inference_input_statistics(one_batch):
    # With one batch, batch-normalizing bn1 in the pass is normalizing by
    # its recalibrated statistics: both layers' statistics are those of
    # their inputs at inference, bn2's after bn1's recalibration.
    model, x, results, _ = one_batch
    first, second = _inference_inputs(model, x)
    for name, inputs in (("bn1", first), ("bn2", second)):
        layer = _bn(model, name)
        mean, var = _stats(inputs)
        np.testing.assert_allclose(
            layer.moving_mean, mean, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            layer.moving_variance, var, rtol=1e-5, atol=1e-5
        )
    assert len(results) == 2


def test_frozen_layer_is_left_alone(one_batch):
    model, _, _, frozen = one_batch
    for a, b in zip(model.get_layer("frozen").weights, frozen):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_batches_pool_every_sample_and_second_layer_sees_batch_norm():
    # Batches of 10 (the last one of 8): bn1's statistics are still exactly
    # those of its inputs over all 48 samples (each sample counts once);
    # bn2's are those of its inputs with bn1 normalizing each batch.
    model = _model()
    x = _data()
    BatchNormRecalibration(model).run(x, batch_size=10)
    first, _ = _inference_inputs(model, x)
    mean, var = _stats(first)
    bn1 = _bn(model, "bn1")
    np.testing.assert_allclose(bn1.moving_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance, var, rtol=1e-5, atol=1e-5)
    second = _bn1_batch_normalized_then_bn2_inputs(model, x, 10)
    mean, var = _stats(second)
    bn2 = _bn(model, "bn2")
    np.testing.assert_allclose(bn2.moving_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn2.moving_variance, var, rtol=1e-4, atol=1e-5)


def test_one_forward_per_batch_and_dropout_off():
    model = _model(run_eagerly=True)
    x = _data()
    recalibration = BatchNormRecalibration(model)
    Counter.calls = 0
    a = recalibration.statistics(x, batch_size=16)
    assert Counter.calls == 3  # 48 samples, batches of 16: one pass
    b = recalibration.statistics(x, batch_size=16)
    # Dropout(0.9) before bn2 is off: two passes agree exactly.
    for (ma, va), (mb, vb) in zip(a, b):
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(va, vb)
    # Layers are back to their own `call` afterwards.
    assert all("call" not in vars(layer) for layer in recalibration.layers)


def test_pass_leaves_other_weights_alone():
    model = _model()
    x = _data()
    before = {
        v.path: np.array(v)
        for v in model.weights
        if "moving" not in v.path or "frozen" in v.path
    }
    BatchNormRecalibration(model).run(x)
    for v in model.weights:
        if v.path in before:
            np.testing.assert_array_equal(np.asarray(v), before[v.path])
