"""Tests for keras_regularize.callbacks.StochasticWeightAveraging."""

import math
import os
import warnings

import keras
import numpy as np
import pytest

import keras_regularize as kr
from keras_regularize.callbacks._batch_norm_recalibration import (
    batch_norm_layers,
)
from keras_regularize.callbacks.stochastic_weight_averaging import (
    StochasticWeightAveraging as SWA,
)
from tests.harness import BACKEND
from tests.harness import ScriptedMonitor
from tests.harness import assert_error_names_value
from tests.harness import jit_modes

NAN = float("nan")
# Eager steps are cheapest on tensorflow and torch; JAX compiles each
# eager op per shape, so a jitted step is cheaper there.
EAGER = BACKEND != "jax"


def _data(n=32, features=4):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, features)) * 2.0 + 0.5).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _model(bn=True, lr=0.05, jit_compile="auto", run_eagerly=None):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4,)), keras.layers.Dense(8)]
    if bn:
        layers += [keras.layers.BatchNormalization()]
    layers += [
        keras.layers.Activation("relu"),
        keras.layers.Dropout(0.5, seed=1),
        keras.layers.Dense(1),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss="mse",
        metrics=["mae"],
        jit_compile=jit_compile,
        run_eagerly=EAGER if run_eagerly is None else run_eagerly,
    )
    return model


class LearningRates(keras.callbacks.Callback):
    """Records the learning rate each epoch trains with."""

    def on_train_begin(self, logs=None):
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            rate = self.model.optimizer.learning_rate
            self.rates.append(float(keras.ops.convert_to_numpy(rate)))


def _trainable(model, weights):
    index = [i for i, v in enumerate(model.weights) if v.trainable]
    return [weights[i] for i in index]


def _mean(script, model, epochs):
    per_epoch = [_trainable(model, script.weights[e]) for e in epochs]
    return [np.mean(np.stack(ws), axis=0) for ws in zip(*per_epoch)]


def _close(got, expected, rtol=1e-6, atol=1e-6):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One compiled fit with BN, annealing, evaluation and a checkpoint."""
    keras.utils.clear_session()
    model = _model(jit_compile=jit_modes()[-1], lr=0.1, run_eagerly=False)
    x, y = _data()
    path = os.path.join(tmp_path_factory.mktemp("swa"), "swa.weights.h5")
    script = ScriptedMonitor([0.0] * 4, monitor="score")
    rates = LearningRates()
    swa = SWA(
        start_epoch=1,
        swa_lr=0.01,
        anneal_epochs=2,
        anneal_strategy="linear",
        recalibration_data=x,
        checkpoint_path=path,
    )
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        validation_data=(x, y),
        callbacks=[script, swa, rates],
        verbose=0,
    )
    return model, swa, script, rates, history.history, path, (x, y)


def test_average_is_numpy_mean_of_epoch_end_weights(trained):
    model, swa, script, *_ = trained
    expected = _mean(script, model, [1, 2, 3])
    _close(_trainable(model, model.get_weights()), expected)
    _close(_trainable(model, swa.averaged_weights()), expected)
    assert swa.get_state()["count"] == 3


def test_raw_weights_are_the_last_epoch(trained):
    model, swa, script, *_ = trained
    for a, b in zip(swa.raw_weights(), script.weights[3]):
        np.testing.assert_array_equal(a, b)


def test_swa_metrics_beside_raw_ones_from_start_epoch(trained):
    model, swa, _, _, history, _, (x, y) = trained
    assert {"val_swa_loss", "val_swa_mae", "val_loss", "val_mae"} <= set(
        history
    )
    assert len(history["val_loss"]) == 4
    assert len(history["val_swa_loss"]) == 3  # epochs 1, 2, 3
    # The last averaged evaluation is of the weights the model now holds
    # (average of epochs 1-3, statistics recalibrated for it).
    loss, mae = model.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(history["val_swa_loss"][-1], loss, rtol=1e-5)


def test_learning_rate_annealed_then_held(trained):
    # linear, lr 0.1 at epoch 1, swa_lr 0.01 over 2 epochs: 0.055, 0.01.
    _, _, _, rates, *_ = trained
    np.testing.assert_allclose(rates.rates, [0.1, 0.1, 0.055, 0.01], rtol=1e-6)


def test_batch_norm_statistics_recalibrated_for_the_average(trained):
    model, _, _, _, _, _, (x, _) = trained
    (bn,) = batch_norm_layers(model)
    dense = model.layers[0]
    inputs = keras.ops.convert_to_numpy(dense(x)).astype("float64")
    np.testing.assert_allclose(
        bn.moving_mean, inputs.mean(0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        bn.moving_variance, inputs.var(0), rtol=1e-5, atol=1e-5
    )


def test_checkpoint_holds_the_averaged_model(trained):
    model, _, _, _, _, path, (x, _) = trained
    fresh = _model(lr=0.1)
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_final_raw_keeps_raw_weights_and_float_lr_held():
    model = _model(bn=False)
    x, y = _data()
    script = ScriptedMonitor([0.0] * 2, monitor="score")
    swa = SWA(start_epoch=0, swa_lr=0.02, final="raw", evaluate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = model.fit(
            x, y, batch_size=32, epochs=2, callbacks=[script, swa], verbose=0
        )
    assert "val_swa_loss" not in history.history
    for a, b in zip(model.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(a, b)
    _close(
        _trainable(model, swa.averaged_weights()), _mean(script, model, [0, 1])
    )
    # A float learning rate keeps its last value (anneal_epochs=0: swa_lr).
    assert math.isclose(
        float(model.optimizer.learning_rate), 0.02, rel_tol=1e-6
    )


def test_schedule_followed_until_start_epoch_then_restored(tmp_path):
    model = _model(bn=False)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    x, y = _data()
    rates = LearningRates()
    swa = SWA(start_epoch=1, swa_lr=0.01, anneal_epochs=1)
    n_variables = len(model.optimizer.variables)
    model.fit(x, y, batch_size=16, epochs=3, callbacks=[swa, rates], verbose=0)
    # 2 steps per epoch: epoch 0 follows the schedule from step 0 (0.1);
    # epoch 1 starts at the schedule's value at step 2 (0.05) and the
    # schedule is no longer consulted; epoch 2 is at swa_lr.
    np.testing.assert_allclose(rates.rates, [0.1, 0.05, 0.01], rtol=1e-6)
    # Afterwards the optimizer has its schedule and variables back...
    assert model.optimizer._learning_rate is schedule
    assert len(model.optimizer.variables) == n_variables
    # ...so it saves and loads with no custom objects.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(
        loaded.optimizer._learning_rate,
        keras.optimizers.schedules.ExponentialDecay,
    )


def test_resumed_run_continues_the_same_average():
    # Two fits (epochs 0-1, then 2-3 with initial_epoch=2) give the average
    # of epochs 1-3 and the learning rates of one uninterrupted run.
    model = _model(bn=False)
    x, y = _data()
    script = ScriptedMonitor([0.0] * 4, monitor="score")
    rates = LearningRates()
    kwargs = dict(start_epoch=1, swa_lr=0.01, anneal_epochs=2, final="raw")
    first = SWA(**kwargs)
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        callbacks=[script, first, rates],
        verbose=0,
    )
    state = first.get_state()
    assert state["count"] == 1 and state["averaged_epoch"] == 1
    second = SWA(**{**kwargs, "final": "averaged"})
    second.set_state(state)
    early = list(rates.rates)
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=4,
        initial_epoch=2,
        callbacks=[script, second, rates],
        verbose=0,
    )
    _close(
        _trainable(model, model.get_weights()), _mean(script, model, [1, 2, 3])
    )
    lr = [0.05, 0.05, (0.05 + 0.01) / 2, 0.01]
    np.testing.assert_allclose(early + rates.rates, lr, rtol=1e-6)


def test_batch_norm_without_recalibration_data_raises_at_train_begin():
    model = _model()
    x, y = _data()
    with pytest.raises(ValueError, match="`recalibration_data`") as info:
        model.fit(x, y, epochs=1, callbacks=[SWA(start_epoch=0)], verbose=0)
    assert_error_names_value(info.value, "recalibration_data", None)
    assert "BatchNormalization" in str(info.value)


def test_start_epoch_after_last_epoch_warns_and_keeps_raw_weights():
    model = _model(bn=False)
    x, y = _data()
    script = ScriptedMonitor([0.0], monitor="score")
    swa = SWA(start_epoch=1)
    with pytest.warns(UserWarning, match="start_epoch=1"):
        history = model.fit(
            x,
            y,
            epochs=1,
            validation_data=(x, y),
            callbacks=[script, swa],
            verbose=0,
        )
    assert "val_swa_loss" not in history.history
    for a, b in zip(model.get_weights(), script.weights[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_averages_in_float32(policy):
    keras.config.set_dtype_policy(policy)
    model = _model()
    x, y = _data()
    script = ScriptedMonitor([0.0] * 2, monitor="score")
    swa = SWA(start_epoch=0, recalibration_data=x, final="raw")
    model.fit(x, y, batch_size=32, epochs=2, callbacks=[script, swa], verbose=0)
    assert all(a.dtype == "float32" for a in swa._averages)
    _close(
        [np.asarray(a) for a in swa._averages],
        _mean(script, model, [0, 1]),
    )


def _classifier(bn=True):
    layers = [keras.Input((4,)), keras.layers.Dense(8)]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.Activation("relu"), keras.layers.Dense(3)]
    return keras.Sequential(layers)


def _wrapped(kind):
    keras.utils.set_random_seed(0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if kind == "distiller":
        model = kr.models.Distiller(
            student=_classifier(), teacher=_classifier(bn=False)
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), run_eagerly=EAGER)
        return model
    if kind == "mixing":
        model = kr.models.MixingModel(
            _classifier(), kr.layers.MixupLayer(alpha=0.4, seed=1)
        )
        optimizer = keras.optimizers.SGD(0.05)
    else:
        model = _classifier()
        optimizer = kr.optimizers.GradientClipping(
            keras.optimizers.SGD(0.05), method="global_norm", threshold=1.0
        )
    model.compile(optimizer=optimizer, loss=loss, run_eagerly=EAGER)
    return model


@pytest.mark.parametrize("kind", ["distiller", "mixing", "clipping"])
def test_inside_wrapper_models_and_optimizers(kind):
    model = _wrapped(kind)
    x, _ = _data()
    y = (x[:, 0] > 0.5).astype("int32")
    script = ScriptedMonitor([0.0] * 2, monitor="score")
    swa = SWA(start_epoch=0, swa_lr=0.01, recalibration_data=x)
    model.fit(x, y, batch_size=32, epochs=2, callbacks=[script, swa], verbose=0)
    expected = _mean(script, model, [0, 1])
    _close([np.asarray(a) for a in swa._averages], expected)
    _close(_trainable(model, model.get_weights()), expected)
    assert math.isclose(
        float(model.optimizer.learning_rate), 0.01, rel_tol=1e-6
    )


BAD = [
    ("start_epoch", -1),
    ("start_epoch", 1.5),
    ("start_epoch", None),
    ("start_epoch", True),
    ("start_epoch", "1"),
    ("start_epoch", NAN),
    ("swa_lr", 0.0),
    ("swa_lr", -0.1),
    ("swa_lr", NAN),
    ("swa_lr", float("inf")),
    ("swa_lr", True),
    ("swa_lr", "0.1"),
    ("anneal_epochs", -1),
    ("anneal_epochs", None),
    ("anneal_epochs", 2.5),
    ("anneal_epochs", False),
    ("anneal_strategy", "cosine"),
    ("anneal_strategy", None),
    ("anneal_strategy", True),
    ("final", "best"),
    ("final", None),
    ("evaluate", 1),
    ("evaluate", "yes"),
    ("evaluate", None),
    ("checkpoint_path", "swa.h5"),
    ("checkpoint_path", 3),
    ("recalibration_data", "data"),
    ("recalibration_data", True),
    ("recalibration_data", 3.0),
]


def test_bad_arguments_name_argument_and_value():
    for name, value in BAD:
        with pytest.raises(ValueError) as info:
            SWA(**{"start_epoch": 0, name: value})
        assert f"`{name}`" in str(info.value), (name, value)
        assert_error_names_value(info.value, name, repr(value))
