"""Tests for keras_regularize.callbacks.EarlyStoppingRestore."""

import math
import os
import warnings

import h5py
import keras
import numpy as np
import pytest
from keras import ops

from keras_regularize.callbacks import EarlyStoppingRestore
from tests.harness import BACKEND
from tests.harness import jit_modes

NAN = float("nan")


class Script(keras.callbacks.Callback):
    """Writes scripted values into the logs and records each epoch's weights.

    Placed before the callback under test, which then sees the scripted
    value; `weights[e]` are the host weights at the end of epoch `e`.
    """

    def __init__(self, values, monitor="val_loss", raise_at=None):
        super().__init__()
        self.values = values
        self.monitor = monitor
        self.raise_at = raise_at
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])
        logs[self.monitor] = self.values[epoch]
        if epoch == self.raise_at:
            raise KeyboardInterrupt


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _model(jit_compile=None):
    """A small model; `jit_compile=None` runs eagerly (no tracing cost)."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss="mse",
        jit_compile=bool(jit_compile),
        run_eagerly=jit_compile is None,
    )
    return model


def _run(values, model=None, epochs=None, script_kwargs=None, **kwargs):
    model = model or _model()
    script = Script(values, **(script_kwargs or {}))
    stop = EarlyStoppingRestore(**kwargs)
    x, y = _data()
    model.fit(
        x,
        y,
        epochs=epochs or len(values),
        batch_size=8,
        callbacks=[script, stop],
        verbose=0,
    )
    return model, script, stop


def _assert_weights(model, expected):
    got = model.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def _differs(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_patience_stop_restores_best_epoch(jit_compile):
    model, script, stop = _run(
        [3.0, 2.0, 1.0, 1.5, 1.7, 1.8, 0.1],
        model=_model(jit_compile),
        patience=2,
    )
    assert (stop.best, stop.best_epoch) == (1.0, 2)
    assert (stop.stopped_epoch, stop.stop_reason, stop.wait) == (
        4,
        "patience",
        2,
    )
    assert len(script.weights) == 5
    assert stop.restored
    assert _differs(script.weights[4], script.weights[2])
    _assert_weights(model, script.weights[2])


def test_completed_run_restores_best_not_last():
    model, script, stop = _run([3.0, 1.0, 2.0], patience=10)
    assert stop.stop_reason == "completed" and stop.stopped_epoch is None
    _assert_weights(model, script.weights[1])


def test_restore_best_false_keeps_last_weights():
    model, script, stop = _run([3.0, 1.0, 2.0], restore_best=False)
    assert not stop.restored
    _assert_weights(model, script.weights[2])


def test_patience_zero_stops_at_first_stall():
    _, _, stop = _run([3.0, 2.0, 2.5, 1.0], patience=0)
    assert (stop.stopped_epoch, stop.best_epoch) == (2, 1)


def test_nan_first_value_never_becomes_best():
    values = [NAN, 2.0, 1.0, 0.5, 0.25]
    model, script, stop = _run(values, patience=2, check_finite=False)
    assert stop.stop_reason == "completed"
    assert (stop.best, stop.best_epoch) == (0.25, 4)
    # Keras adopts the NaN as best and stops a run that keeps improving.
    keras_stop = keras.callbacks.EarlyStopping(patience=2)
    x, y = _data()
    history = _model().fit(
        x,
        y,
        epochs=len(values),
        callbacks=[Script(values), keras_stop],
        verbose=0,
    )
    assert len(history.epoch) < len(values)


def test_non_finite_value_stops_at_once_and_restores():
    model, script, stop = _run([3.0, 2.0, math.inf, 1.0], patience=5)
    assert (stop.stopped_epoch, stop.stop_reason) == (2, "non_finite")
    assert stop.best_epoch == 1
    _assert_weights(model, script.weights[1])


def test_nan_at_first_epoch_stops_without_best():
    model, script, stop = _run([NAN, 1.0])
    assert stop.stop_reason == "non_finite" and stop.best_epoch is None
    assert not stop.restored
    _assert_weights(model, script.weights[0])


def test_baseline_stops_an_improving_run_that_never_reaches_it():
    values = [5.0, 4.0, 3.0, 2.0, 1.0, 0.9]
    _, _, stop = _run(values, patience=3, baseline=0.5)
    assert (stop.stopped_epoch, stop.stop_reason) == (2, "baseline")
    assert stop.best_epoch == 2
    # Keras never stops it.
    x, y = _data()
    history = _model().fit(
        x,
        y,
        epochs=len(values),
        callbacks=[
            Script(values),
            keras.callbacks.EarlyStopping(patience=3, baseline=0.5),
        ],
        verbose=0,
    )
    assert len(history.epoch) == len(values)


def test_baseline_reached_keeps_training():
    _, _, stop = _run([5.0, 0.4, 0.3, 0.2], patience=2, baseline=0.5)
    assert stop.stop_reason == "completed"


def test_stopping_threshold():
    _, _, stop = _run([3.0, 2.0, 1.0, 0.5], stopping_threshold=1.0)
    assert (stop.stopped_epoch, stop.stop_reason) == (2, "stopping_threshold")
    assert stop.best_epoch == 2


def test_divergence_threshold_restores_before_divergence():
    model, script, stop = _run([3.0, 2.0, 10.0, 1.0], divergence_threshold=5)
    assert (stop.stopped_epoch, stop.stop_reason) == (
        2,
        "divergence_threshold",
    )
    _assert_weights(model, script.weights[1])


def test_auto_mode_maximizes_accuracy():
    model, script, stop = _run(
        [0.1, 0.5, 0.4, 0.3],
        monitor="val_accuracy",
        patience=2,
        script_kwargs={"monitor": "val_accuracy"},
    )
    assert (stop.best, stop.best_epoch, stop.stopped_epoch) == (0.5, 1, 3)
    _assert_weights(model, script.weights[1])


def test_max_mode_thresholds_are_mirrored():
    _, _, stop = _run([0.1, 0.5, 0.9, 0.95], mode="max", stopping_threshold=0.8)
    assert (stop.stopped_epoch, stop.stop_reason) == (2, "stopping_threshold")
    _, _, stop = _run(
        [0.5, 0.6, 0.1, 0.7], mode="max", divergence_threshold=0.2
    )
    assert (stop.stopped_epoch, stop.stop_reason) == (
        2,
        "divergence_threshold",
    )


def test_min_delta_is_strict():
    _, _, stop = _run([3.0, 2.95, 2.9, 1.0], min_delta=0.1, patience=2)
    assert (stop.best_epoch, stop.stopped_epoch) == (0, 2)


def test_start_from_epoch_ignores_early_epochs():
    _, _, stop = _run([0.1, 0.2, 3.0, 4.0, 0.5], start_from_epoch=2, patience=1)
    assert (stop.best, stop.best_epoch, stop.stopped_epoch) == (3.0, 2, 3)


def test_reusable_across_fits():
    model = _model()
    stop = EarlyStoppingRestore(patience=1)
    x, y = _data()
    for values in ([1.0, 2.0, 3.0], [9.0, 8.0, 7.0]):
        model.fit(
            x,
            y,
            epochs=3,
            callbacks=[Script(values), stop],
            verbose=0,
        )
    assert (stop.best, stop.best_epoch, stop.stop_reason) == (
        7.0,
        2,
        "completed",
    )


def test_missing_monitor_warns_once_with_available_keys():
    with pytest.warns(UserWarning) as record:
        _run([1.0, 2.0, 3.0], monitor="val_acc", patience=0)
    messages = [str(r.message) for r in record if "val_acc" in str(r.message)]
    assert len(messages) == 1
    assert "'loss'" in messages[0] and "'val_loss'" in messages[0]


def test_missing_monitor_raises_when_strict():
    with pytest.raises(ValueError, match="Available keys"):
        _run([1.0], monitor="val_acc", strict=True)


def test_best_weights_stay_on_device_in_reused_buffers():
    model = _model()
    model.get_weights = None  # any host round trip would fail
    stop = EarlyStoppingRestore(monitor="loss", patience=5)
    x, y = _data()
    first = []

    class Grab(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                first.extend(stop._best_values)

    model.fit(x, y, epochs=3, callbacks=[stop, Grab()], verbose=0)
    assert stop.best_epoch == 2 and stop.restored
    values = stop._best_values
    assert len(values) == len(model.weights)
    on_cpu = (
        all(d.startswith("cpu") for d in keras.distribution.list_devices())
        if BACKEND == "jax"
        else False
    )
    for value, early, variable in zip(values, first, model.weights):
        assert tuple(value.shape) == tuple(variable.shape)
        if BACKEND == "jax" and on_cpu:
            assert isinstance(value, np.ndarray)  # the CPU is the device
        else:
            assert not isinstance(value, np.ndarray)
        if BACKEND != "jax" or on_cpu:
            assert value is early  # the same buffers, updated in place
        if BACKEND == "torch":
            assert value.value.data_ptr() != variable.value.data_ptr()
            assert not value.value.requires_grad


def test_guard_is_removed_after_fit():
    model = _model()
    x, y = _data()
    stop = EarlyStoppingRestore(monitor="loss")
    model.fit(x, y, epochs=1, callbacks=[stop], verbose=0)
    step = model.train_function
    assert not hasattr(step, "_early_stopping_restore_guard")
    model.fit(x, y, epochs=1, callbacks=[stop], verbose=0)
    assert model.train_function is step


class _Explode(keras.layers.Layer):
    """Identity that raises KeyboardInterrupt at its `at`-th training call."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at = at
        self.calls = 0

    def call(self, x, training=False):
        if training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return x


def test_interrupt_inside_a_train_step_restores_automatically():
    # 4 steps per epoch; the 14th step is in epoch 3, after epoch 1 was best.
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8), _Explode(14)]
    )
    model.add(keras.layers.Dense(1))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.run_eagerly = True
    script = Script([3.0, 1.0, 2.0, 0.5, 0.1])
    stop = EarlyStoppingRestore(patience=5)
    x, y = _data()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=5, batch_size=4, callbacks=[script, stop])
    assert len(script.weights) == 3
    assert stop.stop_reason == "interrupted" and stop.restored
    _assert_weights(model, script.weights[1])
    assert not hasattr(model.train_function, "_early_stopping_restore_guard")
    # The model trains again afterwards.
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_interrupt_elsewhere_needs_the_documented_call(jit_compile):
    # An exception raised outside the train step (here by a callback) gets
    # no Keras hook; `restore_on_error` and `restore()` cover it.
    for use_context in (True, False):
        model = _model(jit_compile)
        script = Script([3.0, 1.0, 2.0, 2.5], raise_at=3)
        stop = EarlyStoppingRestore(patience=5)
        x, y = _data()
        with pytest.raises(KeyboardInterrupt):
            if use_context:
                with stop.restore_on_error():
                    model.fit(x, y, epochs=4, callbacks=[script, stop])
            else:
                try:
                    model.fit(x, y, epochs=4, callbacks=[script, stop])
                except KeyboardInterrupt:
                    assert _differs(model.get_weights(), script.weights[1])
                    assert stop.restore()
                    raise
        _assert_weights(model, script.weights[1])
        model.fit(x, y, epochs=1, verbose=0)


def test_mixed_precision_restores_float32_weights():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, script, stop = _run(
            [3.0, 1.0, 2.0], model=_model(jit_modes()[-1])
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert all(w.dtype == "float32" for w in model.get_weights())
    _assert_weights(model, script.weights[1])


def test_wrapper_model_with_frozen_inner_model():
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    teacher.trainable = False
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    inputs = keras.Input((4,))
    outputs = keras.layers.Average()([teacher(inputs), student(inputs)])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    model, script, stop = _run([2.0, 1.0, 3.0], model=model)
    _assert_weights(model, script.weights[1])


def test_checkpoint_is_written_atomically_and_loads(tmp_path, monkeypatch):
    path = tmp_path / "a" / "b" / "best.weights.h5"
    model, script, stop = _run(
        [3.0, 1.0, 2.0], checkpoint_path=path, restore_best=False
    )
    assert sorted(os.listdir(path.parent)) == ["best.weights.h5"]
    fresh = _model()
    fresh.load_weights(path)
    _assert_weights(fresh, script.weights[1])
    with h5py.File(path) as f:
        assert "optimizer" in f

    # A save that dies half-way leaves the last complete file in place.
    real_save = keras.saving.save_weights
    calls = []

    def dying_save(model, filepath, **kwargs):
        calls.append(filepath)
        if len(calls) == 2:
            with open(filepath, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
        return real_save(model, filepath, **kwargs)

    monkeypatch.setattr(keras.saving, "save_weights", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _run([3.0, 1.0, 2.0], checkpoint_path=path)
    monkeypatch.setattr(keras.saving, "save_weights", real_save)
    assert str(calls[0]).endswith(".weights.h5") and calls[0] != str(path)
    assert sorted(os.listdir(path.parent)) == ["best.weights.h5"]
    fresh = _model()
    fresh.load_weights(path)  # the first epoch's complete file


def test_checkpoint_without_optimizer(tmp_path):
    path = tmp_path / "best.weights.h5"
    model, script, _ = _run(
        [3.0, 1.0, 2.0], checkpoint_path=path, save_optimizer=False
    )
    with h5py.File(path) as f:
        assert "optimizer" not in f
    fresh = _model()
    fresh.load_weights(path)
    _assert_weights(fresh, script.weights[1])


def test_unwritable_checkpoint_path_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    script = Script([1.0])
    stop = EarlyStoppingRestore(checkpoint_path=blocker / "best.weights.h5")
    x, y = _data()
    with pytest.raises(OSError, match="cannot write `checkpoint_path`"):
        _model().fit(x, y, epochs=1, callbacks=[script, stop], verbose=0)
    assert script.weights == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patience": -1}, "argument `patience`.*Received: patience=-1"),
        ({"min_delta": -0.1}, "argument `min_delta`.*min_delta=-0.1"),
        ({"start_from_epoch": -2}, "argument `start_from_epoch`"),
        ({"mode": "lowest"}, "argument `mode`.*Received: mode='lowest'"),
        ({"baseline": NAN}, "argument `baseline`"),
        ({"checkpoint_path": "best.h5"}, "argument `checkpoint_path`"),
        ({"verbose": 2}, "argument `verbose`"),
        ({"monitor": None}, "argument `monitor`.*Received: monitor=None"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStoppingRestore(**kwargs)


def test_on_device_copy_survives_training():
    # The property the callback relies on, per backend: a copy taken with
    # `ops.copy(ops.stop_gradient(v.value))` is unaffected by later steps.
    model = _model(jit_modes()[-1])
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    kept = [ops.copy(ops.stop_gradient(v.value)) for v in model.weights]
    host = [w.copy() for w in model.get_weights()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=2, verbose=0)
    assert _differs(model.get_weights(), host)
    for value, expected in zip(kept, host):
        np.testing.assert_array_equal(ops.convert_to_numpy(value), expected)


def test_accelerator_copy_path(monkeypatch):
    # JAX on GPU/TPU keeps `keras.ops.copy` arrays; exercise that path here.
    from keras_regularize.callbacks import early_stopping_restore as module

    monkeypatch.setattr(module, "_snapshot_kind", lambda: "copy")
    model, script, stop = _run(
        [3.0, 1.0, 2.0, 2.5], model=_model(jit_modes()[-1]), patience=2
    )
    assert stop._kind == "copy" and stop.stop_reason == "patience"
    _assert_weights(model, script.weights[1])
    model.fit(*_data(), epochs=1, verbose=0)  # restored arrays not donated
    assert stop.restore()
    _assert_weights(model, script.weights[1])


def test_two_instances_on_one_model():
    model = _model(jit_modes()[-1])
    script = Script([3.0, 1.0, 2.0, 0.5])
    a = EarlyStoppingRestore(patience=5)
    b = EarlyStoppingRestore(monitor="loss", restore_best=False)
    x, y = _data()
    model.fit(x, y, epochs=4, callbacks=[script, a, b], verbose=0)
    _assert_weights(model, script.weights[3])
    assert b.best_epoch is not None
    # A stale guard only passes through, and the next fit drops it.
    model.fit(x, y, epochs=1, callbacks=[a], verbose=0)
    step = model.train_function
    assert not hasattr(step, "_early_stopping_restore_guard")
