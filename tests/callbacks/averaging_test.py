"""Tests for the weight-averaging base, `callbacks._averaging.WeightAveraging`.

A toy subclass (the mean of the epoch-end weights, with a hook that sets the
batch-norm moving mean) exercises what EMA and SWA share: the side-by-side
evaluation, the hook, the state the hook leaves, `_ready`, the final swap,
the accessors, state, and the `EarlyStoppingRestore` interplay.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_regularize as kr
from keras_regularize.callbacks import _averaging
from keras_regularize.callbacks._averaging import WeightAveraging

HELD = 0.25  # the moving mean the toy hook sets for the averaged model
TOL = 1e-5


def _numpy(value):
    return np.array(keras.ops.convert_to_numpy(value))


class EpochMean(WeightAveraging):
    """Mean of the weights at each validation; ready after `ready_after`."""

    prefix = "tst"

    def __init__(self, ready_after=2, **kwargs):
        super().__init__(**kwargs)
        self.ready_after = ready_after
        self.hook_saw_average = []

    def _start(self):
        self.folded = 0

    def _before_validation(self):
        n = self._read_count()
        for a, v in zip(self._averages, self._sources):
            a.assign((a * n + ops.cast(v, "float32")) / (n + 1))
        self._count.assign(n + 1)
        self.folded += 1

    def _ready(self):
        return self._read_count() >= self.ready_after

    def _after_swap_in(self):
        self.hook_saw_average.append(
            all(
                np.allclose(_numpy(v), _numpy(a))
                for v, a in zip(self._sources, self._averages)
            )
        )
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(
                    ops.full(layer.moving_mean.shape, HELD)
                )

    def _extra_state(self):
        return {"folded": self.folded}

    def _load_extra_state(self, state):
        self.loaded = state["folded"]


class Epochs(keras.callbacks.Callback):
    def __init__(self, averaging):
        super().__init__()
        self.averaging = averaging
        self.raw, self.averaged = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.raw.append([_numpy(w) for w in self.model.weights])
        if self.averaging._read_count():
            self.averaged.append(self.averaging.averaged_weights())


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.1, seed=1),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


@pytest.fixture(scope="module")
def run():
    model = _model()
    x, y = _data()
    averaging = EpochMean()
    epochs = Epochs(averaging)
    stop = kr.callbacks.EarlyStoppingRestore(monitor="val_tst_loss")
    optimizer_variables = len(model.optimizer.variables)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            shuffle=False,
            validation_data=(x, np.zeros_like(y)),
            callbacks=[stop, averaging, epochs],
            verbose=0,
        )
    return {
        "warnings": [str(w.message) for w in caught],
        "model": model,
        "averaging": averaging,
        "epochs": epochs,
        "stop": stop,
        "history": history.history,
        "optimizer_variables": optimizer_variables,
        "final": [_numpy(w) for w in model.weights],
    }


def test_averaged_keys_only_once_ready(run):
    history = run["history"]
    assert len(history["val_loss"]) == 3
    assert len(history["val_tst_loss"]) == 2  # ready from epoch 1 on
    # Epoch 0 had no averaged key: EarlyStoppingRestore said why, once.
    (message,) = [m for m in run["warnings"] if "val_tst_loss" in m]
    assert "EpochMean" in message and "once its average has started" in message


def test_hook_runs_after_the_swap_before_the_averaged_evaluation(run):
    averaging, epochs = run["averaging"], run["epochs"]
    assert averaging.hook_saw_average and all(averaging.hook_saw_average)
    x, y = _data()
    clone = keras.models.clone_model(run["model"])
    clone.compile(loss="mse")
    for i, epoch in enumerate((1, 2)):
        weights = epochs.averaged[epoch]
        clone.set_weights(weights)
        expected = clone.evaluate(x, np.zeros_like(y), verbose=0)
        np.testing.assert_allclose(
            run["history"]["val_tst_loss"][i], expected, rtol=1e-4
        )


def test_state_left_by_the_hook_belongs_to_the_averaged_model(run):
    model, averaging, epochs = run["model"], run["averaging"], run["epochs"]
    mean = [i for i, v in enumerate(model.weights) if "moving_mean" in v.path]
    (mean,) = mean
    np.testing.assert_allclose(epochs.averaged[-1][mean], HELD)
    assert not np.allclose(epochs.raw[-1][mean], HELD)
    # Between epochs the model holds the raw statistics again.
    np.testing.assert_allclose(
        averaging.raw_weights()[mean], epochs.raw[-1][mean]
    )


def test_only_trainable_variables_are_averaged_outside_the_optimizer(run):
    model, averaging = run["model"], run["averaging"]
    trainable = [id(v) for v in model.trainable_variables]
    assert [id(v) for v in averaging._sources] == trainable
    assert len(model.optimizer.variables) == run["optimizer_variables"]
    assert {str(a.dtype) for a in averaging._averages} == {"float32"}


def test_early_stopping_keeps_the_averaged_model_of_its_best_epoch(run):
    stop, epochs = run["stop"], run["epochs"]
    assert stop.restored and stop.best_epoch in (1, 2)
    assert _max_diff(run["final"], epochs.averaged[stop.best_epoch]) < TOL


def test_registry_is_cleared_and_explains_missing_keys(run):
    model = run["model"]
    assert _averaging.averaging_for(model, "val_tst_loss") is None
    hint = _averaging.averaging_hint(model, "val_tst_loss")
    assert "EpochMean" in hint and "none is in this fit" in hint
    assert _averaging.averaging_hint(model, "val_loss") == ""


def test_state_round_trip_and_final_swap(run):
    state = run["averaging"].get_state()
    assert state["prefix"] == "tst" and state["count"] == 3
    assert state["folded"] == 3
    model = run["model"]
    again = EpochMean()
    again.set_state(state)
    x, y = _data(8)
    # No epoch: the state is loaded, then put in place (with the hook).
    model.fit(x, y, epochs=0, callbacks=[again], verbose=0)
    assert again.loaded == 3
    trainable = [_numpy(w) for w in model.trainable_weights]
    assert _max_diff(trainable, state["averages"]) < TOL


def test_not_ready_keeps_the_raw_weights():
    model = _model()
    x, y = _data(8)
    averaging = EpochMean(ready_after=99)
    history = model.fit(
        x, y, validation_data=(x, y), callbacks=[averaging], verbose=0
    )
    assert "val_tst_loss" not in history.history
    raw = averaging.raw_weights()
    assert _max_diff([_numpy(w) for w in model.weights], raw) == 0.0
    assert averaging.hook_saw_average == []


def test_bad_base_arguments():
    for name, value in (
        ("evaluate", 1),
        ("final", "best"),
        ("checkpoint_path", "x.h5"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            EpochMean(**{name: value})
