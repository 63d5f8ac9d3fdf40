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
from tests.harness import ScriptedMonitor as Script
from tests.harness import jit_modes

NAN = float("nan")


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _model(jit_compile=None, metrics=None):
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
        metrics=metrics,
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
    # The direction comes from the compiled `Accuracy` metric (`"up"`).
    model, script, stop = _run(
        [0.1, 0.5, 0.4, 0.3],
        model=_model(metrics=["accuracy"]),
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
        _run([1.0, 2.0, 3.0], monitor="val_acc", mode="max", patience=0)
    messages = [str(r.message) for r in record if "val_acc" in str(r.message)]
    assert len(messages) == 1
    assert "'loss'" in messages[0] and "'val_loss'" in messages[0]


def test_missing_monitor_raises_when_strict():
    with pytest.raises(ValueError, match="Available keys"):
        _run([1.0], monitor="val_acc", mode="max", strict=True)


def test_best_weights_stay_on_device_in_reused_buffers():
    model = _model()
    model.get_weights = None  # any host round trip would fail
    stop = EarlyStoppingRestore(monitor="loss", patience=5)
    x, y = _data()
    first = []

    class Grab(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                first.extend(stop._snapshot.values)

    model.fit(x, y, epochs=3, callbacks=[stop, Grab()], verbose=0)
    assert stop.best_epoch == 2 and stop.restored
    values = stop._snapshot.values
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
    from keras_regularize import _backend as module

    monkeypatch.setattr(module, "weight_snapshot_kind", lambda: "copy")
    model, script, stop = _run(
        [3.0, 1.0, 2.0, 2.5], model=_model(jit_modes()[-1]), patience=2
    )
    assert stop._snapshot.kind == "copy" and stop.stop_reason == "patience"
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


# -- mode="auto": names, then metric directions, else an error --------------


@pytest.mark.parametrize(
    "monitor",
    [
        "val_giou_loss",
        "val_iou_loss",
        "val_soft_f1_loss",
        "val_previous_loss",
        "val_acceleration_mae",
        "val_mean_squared_error",
        "binary_crossentropy",
        "val_squared_hinge",
        "val_accuracy_rmse",
    ],
)
def test_auto_mode_minimizes_names_ending_in_loss_or_error(monitor):
    # A decreasing value must improve at every epoch, whatever the name
    # contains (`iou`, `f1`, `acc`, `prev`...).
    model, script, stop = _run(
        [2.0, 1.0],
        model=_model(metrics=["accuracy"]),
        monitor=monitor,
        patience=1,
        script_kwargs={"monitor": monitor},
    )
    assert (stop.best, stop.best_epoch, stop.stop_reason) == (
        1.0,
        1,
        "completed",
    )
    _assert_weights(model, script.weights[1])


# (compiled metrics, monitor, direction): the cases of Keras's own
# early-stopping test, plus metrics whose names give no hint.
DIRECTION_CASES = [
    (["mse"], "val_mse", "min"),
    ([], "loss", "min"),
    (["acc"], "acc", "max"),
    (["accuracy"], "val_accuracy", "max"),
    (["hinge"], "hinge", "min"),
    ("f1", "f1_score", "max"),
    ("auc", "val_auc", "max"),
    ("precision", "val_precision", "max"),
    ("quiet_down", "val_sq", "min"),
    ("quiet_up", "val_score", "max"),
]


def _metrics(spec):
    if spec == "f1":
        return [keras.metrics.F1Score(name="f1_score", average="micro")]
    if spec == "auc":
        return [keras.metrics.AUC(name="auc")]
    if spec == "precision":
        return [keras.metrics.Precision(name="precision")]
    if spec == "quiet_down":  # a "down" metric with a neutral name
        return [keras.metrics.MeanSquaredError(name="sq")]
    if spec == "quiet_up":  # an "up" metric with a neutral name
        return [keras.metrics.BinaryAccuracy(name="score")]
    return spec


@pytest.mark.parametrize("metrics, monitor, direction", DIRECTION_CASES)
def test_auto_mode_follows_the_compiled_metric_direction(
    metrics, monitor, direction
):
    # Scripted values that rise: only a maximized monitor improves at the
    # second epoch.
    _, _, stop = _run(
        [1.0, 2.0],
        model=_model(metrics=_metrics(metrics)),
        monitor=monitor,
        script_kwargs={"monitor": monitor},
    )
    assert stop.best_epoch == (1 if direction == "max" else 0)


def test_auto_mode_reads_multi_output_metric_names():
    inputs = keras.Input((4,))
    a = keras.layers.Dense(1, name="a")(inputs)
    b = keras.layers.Dense(1, name="b")(inputs)
    model = keras.Model(inputs, {"a": a, "b": b})
    model.compile(
        optimizer="sgd",
        loss={"a": "mse", "b": "mse"},
        metrics={"a": ["mae"], "b": [keras.metrics.BinaryAccuracy()]},
        run_eagerly=True,
    )
    x, y = _data()
    stop = EarlyStoppingRestore(monitor="val_b_binary_accuracy")
    script = Script([1.0, 2.0], monitor="val_b_binary_accuracy")
    model.fit(
        x,
        {"a": y, "b": y},
        epochs=2,
        callbacks=[script, stop],
        verbose=0,
    )
    assert stop.best_epoch == 1


@pytest.mark.parametrize(
    "metrics", [None, ["accuracy"], "no_direction"], ids=str
)
def test_auto_mode_without_a_known_direction_raises(metrics):
    if metrics == "no_direction":  # a compiled metric with no direction
        metrics = [
            keras.metrics.MeanMetricWrapper(
                lambda t, p: ops.mean(p - t, axis=-1), name="custom"
            )
        ]
    script = Script([1.0, 2.0], monitor="val_custom")
    stop = EarlyStoppingRestore(monitor="val_custom")
    x, y = _data()
    model = _model(metrics=metrics)
    with pytest.raises(
        ValueError,
        match=r"argument `mode`.*monitor='val_custom'.*Received: mode='auto'",
    ):
        model.fit(x, y, epochs=2, callbacks=[script, stop], verbose=0)
    # Before training when the metrics are known at `on_train_begin` (no
    # compiled metrics, or built ones); at the latest at the first epoch
    # end (TensorFlow builds compiled metrics in the first step).
    built = metrics is None or BACKEND != "tensorflow"
    assert len(script.weights) == (0 if built else 1)
    assert not hasattr(model.train_function, "_early_stopping_restore_guard")
    # An explicit mode needs no metric.
    _, _, stop = _run(
        [1.0, 2.0],
        mode="max",
        monitor="val_custom",
        script_kwargs={"monitor": "val_custom"},
    )
    assert stop.best_epoch == 1


def test_direction_is_found_again_for_each_fit():
    stop = EarlyStoppingRestore(monitor="val_score")
    x, y = _data()
    for spec, best_epoch in (("quiet_up", 1), ("quiet_down_score", 0)):
        if spec == "quiet_down_score":
            metrics = [keras.metrics.MeanSquaredError(name="score")]
        else:
            metrics = _metrics(spec)
        _model(metrics=metrics).fit(
            x,
            y,
            epochs=2,
            callbacks=[Script([1.0, 2.0], monitor="val_score"), stop],
            verbose=0,
        )
        assert stop.best_epoch == best_epoch


# -- array-valued metrics ----------------------------------------------------


def _classifier(classes, metric):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                classes, activation="sigmoid" if classes == 1 else "softmax"
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="binary_crossentropy"
        if classes == 1
        else "categorical_crossentropy",
        metrics=[metric],
        run_eagerly=True,
    )
    return model


def _labels(classes, n=16):
    x, y = _data(n)
    if classes == 1:
        return x, (y > 0).astype("float32")
    ids = (np.abs(y[:, 0] * 3).astype("int64")) % classes
    return x, np.eye(classes, dtype="float32")[ids]


def test_size_one_array_metric_is_monitored_as_a_number():
    # `F1Score()` logs a 1-element array for a one-unit output.
    x, y = _labels(1)
    stop = EarlyStoppingRestore(monitor="val_f1_score", patience=5)
    history = _classifier(1, keras.metrics.F1Score(threshold=0.5)).fit(
        x, y, validation_data=(x, y), epochs=3, callbacks=[stop], verbose=0
    )
    values = [float(np.reshape(v, ())) for v in history.history["val_f1_score"]]
    assert isinstance(stop.best, float) and stop.best == max(values)
    assert stop.stop_reason == "completed"
    # Keras's own EarlyStopping completes the same fit.
    _classifier(1, keras.metrics.F1Score(threshold=0.5)).fit(
        x,
        y,
        validation_data=(x, y),
        epochs=2,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_f1_score")],
        verbose=0,
    )


def test_size_one_tensors_and_arrays_in_the_logs_are_accepted():
    values = [
        np.array([3.0]),
        ops.convert_to_tensor([[1.0]]),
        np.float32(2.0),
    ]
    model, script, stop = _run(values, patience=5)
    assert (stop.best, stop.best_epoch) == (1.0, 1)
    _assert_weights(model, script.weights[1])


def test_larger_array_metric_raises_naming_monitor_and_shape():
    x, y = _labels(3)
    model = _classifier(3, keras.metrics.F1Score())  # per-class: shape (3,)
    stop = EarlyStoppingRestore(monitor="val_f1_score")
    with pytest.raises(ValueError, match=r"`val_f1_score`.*shape \(3,\)"):
        model.fit(
            x,
            y,
            validation_data=(x, y),
            epochs=2,
            callbacks=[stop],
            verbose=0,
        )
    assert not hasattr(model.train_function, "_early_stopping_restore_guard")


@pytest.mark.parametrize("value", ["high", [1.0, 2.0]], ids=["str", "list"])
def test_non_numeric_logged_value_raises_naming_monitor(value):
    with pytest.raises(ValueError, match="`val_loss`"):
        _run([value], patience=5)


# -- the step guard belongs to its own fit -----------------------------------


class _Fail(keras.layers.Layer):
    """Identity raising KeyboardInterrupt at the `at`-th training call.

    Counts from when `at` is set; `None` never raises.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.at = None

    def call(self, x, training=False):
        if training and self.at and not isinstance(x, keras.KerasTensor):
            self.at -= 1
            if self.at == 0:
                raise KeyboardInterrupt
        return x


class _Record(keras.callbacks.Callback):
    """Keeps the host weights after each training step."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


class _RaiseAtBatchBegin(keras.callbacks.Callback):
    """Raises RuntimeError at the second batch of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise RuntimeError("from another callback")


def _failing_model():
    fail = _Fail()
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8), fail, keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05), loss="mse", run_eagerly=True
    )
    return model, fail


@pytest.mark.parametrize("where", ["epoch_end", "batch_begin"])
def test_fit_left_by_another_exception_does_not_guard_later_fits(where):
    # The first fit ends by an exception raised outside the step and outside
    # `restore_on_error()`, so `on_train_end` never runs. `batch_begin`
    # raises after this callback's own `on_train_batch_begin` has run.
    model, fail = _failing_model()
    x, y = _data()
    stop = EarlyStoppingRestore(patience=5)
    if where == "epoch_end":
        script = Script([3.0, 1.0, 2.0], raise_at=2)
        callbacks, error = [script, stop], KeyboardInterrupt
    else:
        script = Script([3.0, 1.0, 2.0])
        callbacks = [script, stop, _RaiseAtBatchBegin(2)]
        error = RuntimeError
    with pytest.raises(error):
        model.fit(x, y, epochs=3, batch_size=8, callbacks=callbacks)
    assert stop.best_epoch == 1
    before = model.get_weights()
    assert _differs(before, script.weights[1])

    # A later fit without the callback fails in its second step (a failure
    # in the first one leaves Keras's JAX variables purged, callback or
    # not): it keeps the weights of its first step, not the old best.
    fail.at, record = 2, _Record()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=1, batch_size=8, callbacks=[record], verbose=0)
    assert len(record.weights) == 1
    _assert_weights(model, record.weights[0])
    assert _differs(record.weights[0], script.weights[1])
    assert not stop.restored
    assert not hasattr(model.train_function, "_early_stopping_restore_guard")
    fail.at = None
    model.fit(x, y, epochs=1, verbose=0)


def test_train_on_batch_after_an_abandoned_fit_is_not_reverted():
    # The guard stays on the step until something runs it, but a step that
    # is not one of its fit's passes straight through.
    model, fail = _failing_model()
    x, y = _data()
    stop = EarlyStoppingRestore(patience=5)
    script = Script([3.0, 1.0, 2.0], raise_at=2)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=3, batch_size=8, callbacks=[script, stop])
    before = model.get_weights()
    assert _differs(before, script.weights[1])
    fail.at = 1
    with pytest.raises(KeyboardInterrupt):
        model.train_on_batch(x, y)
    _assert_weights(model, before)
    assert not stop.restored


def test_own_error_in_on_epoch_end_restores_and_unhooks():
    # An error this callback raises at an epoch end skips `on_train_end`; it
    # restores the best weights and removes its guard first.
    model = _model()
    script = Script([3.0, 1.0, np.array([1.0, 2.0])])
    stop = EarlyStoppingRestore(patience=5)
    x, y = _data()
    with pytest.raises(ValueError, match=r"`val_loss`.*shape \(2,\)"):
        model.fit(x, y, epochs=3, callbacks=[script, stop], verbose=0)
    assert stop.stop_reason == "interrupted" and stop.restored
    _assert_weights(model, script.weights[1])
    assert not hasattr(model.train_function, "_early_stopping_restore_guard")


# -- one checkpoint path, several writers -----------------------------------


def test_two_writers_of_one_checkpoint_path_never_collide(
    tmp_path, monkeypatch
):
    # Two writers (threads here; processes alike) between save and rename
    # at once: with a shared temporary name, the second rename would find
    # no file (OSError).
    import threading

    from keras_regularize._checkpoint import atomic_save_weights

    path = tmp_path / "best.weights.h5"
    real_save = keras.saving.save_weights
    barrier = threading.Barrier(2, timeout=30)
    temporaries = []

    def save_then_wait(model, filepath, **kwargs):
        real_save(model, filepath, **kwargs)
        temporaries.append(str(filepath))
        barrier.wait()

    models = [_model(), _model()]
    for model in models:
        model.build((None, 4))
    monkeypatch.setattr(keras.saving, "save_weights", save_then_wait)
    errors = []

    def write(model):
        try:
            atomic_save_weights(model, path)
        except BaseException as error:  # reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    monkeypatch.setattr(keras.saving, "save_weights", real_save)
    assert errors == []
    assert len(set(temporaries)) == 2
    assert all(str(tmp_path) in t and t != str(path) for t in temporaries)
    assert sorted(os.listdir(tmp_path)) == ["best.weights.h5"]
    fresh = _model()
    fresh.load_weights(path)


def test_two_callbacks_of_one_checkpoint_path_are_rejected(tmp_path):
    path = tmp_path / "best.weights.h5"
    first = EarlyStoppingRestore(checkpoint_path=path)
    first.set_model(_model())
    first.on_train_begin()
    second = EarlyStoppingRestore(checkpoint_path=str(path))
    second.set_model(_model())
    with pytest.raises(ValueError, match="writes that file already"):
        second.on_train_begin()
    first.on_train_end()
    second.on_train_begin()  # free again once the first fit ended
    second.on_train_end()


def test_checkpoint_rename_is_followed_by_a_directory_fsync(
    tmp_path, monkeypatch
):
    path = tmp_path / "best.weights.h5"
    events = []
    real_replace, real_open, real_fsync = os.replace, os.open, os.fsync

    def replace(src, dst, *args, **kwargs):
        events.append("replace")
        return real_replace(src, dst, *args, **kwargs)

    def open_(file, flags, *args, **kwargs):
        fd = real_open(file, flags, *args, **kwargs)
        if os.path.isdir(file):
            events.append(("open_dir", os.fspath(file), fd))
        return fd

    def fsync(fd):
        events.append(("fsync", fd))
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)
    _run([3.0, 1.0], checkpoint_path=path)
    monkeypatch.undo()
    after = events[events.index("replace") + 1 :]
    opened = [e for e in after if e[0] == "open_dir"]
    assert opened and opened[0][1] == str(tmp_path)
    assert ("fsync", opened[0][2]) in after

    # Where a directory cannot be opened (Windows), the write still works.
    def no_dir_open(file, flags, *args, **kwargs):
        if os.path.isdir(file):
            raise PermissionError("directories cannot be opened here")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_dir_open)
    _, script, _ = _run([3.0, 1.0, 2.0], checkpoint_path=path)
    monkeypatch.undo()
    fresh = _model()
    fresh.load_weights(path)
    _assert_weights(fresh, script.weights[1])


# -- arguments ---------------------------------------------------------------

INF = float("inf")

BAD_ARGUMENTS = [
    ("patience", True),
    ("patience", 1.5),
    ("patience", "3"),
    ("patience", None),
    ("min_delta", INF),
    ("min_delta", NAN),
    ("min_delta", True),
    ("min_delta", "0.1"),
    ("min_delta", None),
    ("baseline", INF),
    ("baseline", -INF),
    ("baseline", True),
    ("baseline", "1"),
    ("stopping_threshold", INF),
    ("stopping_threshold", NAN),
    ("divergence_threshold", -INF),
    ("divergence_threshold", False),
    ("start_from_epoch", True),
    ("start_from_epoch", None),
    ("verbose", True),
    ("verbose", "1"),
    ("verbose", None),
    ("restore_best", 1),
    ("restore_best", "yes"),
    ("restore_best", None),
    ("save_optimizer", 0),
    ("check_finite", "no"),
    ("strict", 1),
    ("mode", None),
    ("mode", True),
    ("monitor", ""),
    ("monitor", 3),
    ("checkpoint_path", 3),
    ("checkpoint_path", b"best.weights.h5"),
    ("checkpoint_path", ""),
]


@pytest.mark.parametrize(
    "name, value", BAD_ARGUMENTS, ids=[f"{n}={v!r}" for n, v in BAD_ARGUMENTS]
)
def test_bad_argument_names_the_argument_and_value(name, value):
    with pytest.raises(ValueError) as info:
        EarlyStoppingRestore(**{name: value})
    message = str(info.value)
    assert f"argument `{name}`" in message
    assert f"Received: {name}={value!r}" in message
    assert "inf" not in message.split("Received")[0]


# -- behaviours of Keras's own EarlyStopping tests ---------------------------


def _driven(**kwargs):
    """A callback driven through its hooks, as Keras's tests do."""
    stop = EarlyStoppingRestore(**kwargs)
    model = _model()
    stop.set_model(model)
    stop.on_train_begin()
    return stop, model


def _drive(stop, model, values, monitor="loss"):
    for epoch, value in enumerate(values):
        stop.on_epoch_end(epoch, {monitor: value})
        if model.stop_training:
            break
    stop.on_train_end()


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_patience_counts_epochs_without_improvement(patience):
    # Keras stops this run at epoch `max(patience, 1) + 2`; so do we.
    stop, model = _driven(monitor="loss", patience=patience)
    model.stop_training = False
    _drive(stop, model, [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5])
    assert stop.stopped_epoch == max(patience, 1) + 2
    assert (stop.best, stop.best_epoch) == (8.0, 2)


def test_state_resets_at_train_begin():
    stop, model = _driven(monitor="loss", patience=3)
    _drive(stop, model, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert stop.stopped_epoch == 3
    stop.on_train_begin()
    assert (stop.best, stop.best_epoch, stop.stopped_epoch, stop.wait) == (
        math.inf,
        None,
        None,
        0,
    )
    assert stop.stop_reason is None and not stop.restored
    stop.on_train_end()


def test_baseline_never_reached_restores_the_best_epoch():
    # No epoch reaches the baseline: training stops after `patience` epochs
    # and the best of them is restored (Keras: 5 epochs, epoch 2 restored).
    model, script, stop = _run(
        [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], patience=5, baseline=0.5
    )
    assert (stop.stopped_epoch, stop.stop_reason) == (4, "baseline")
    assert len(script.weights) == 5
    _assert_weights(model, script.weights[2])


def test_restores_best_when_another_callback_stops_training():
    class StopAt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                self.model.stop_training = True

    model = _model()
    script = Script([0.9, 0.8, 0.7, 0.71, 0.72, 0.73])
    stop = EarlyStoppingRestore(patience=5)
    x, y = _data()
    model.fit(x, y, epochs=6, callbacks=[script, stop, StopAt()], verbose=0)
    assert len(script.weights) == 4
    assert stop.stop_reason == "completed" and stop.stopped_epoch is None
    _assert_weights(model, script.weights[2])


@pytest.mark.parametrize("patience", [0, 3])
def test_start_from_epoch_delays_patience(patience):
    # A flat metric: the first monitored epoch is the best, and patience
    # counts from there (Keras: at least `patience + start_from_epoch`).
    _, script, stop = _run([1.0] * 10, patience=patience, start_from_epoch=2)
    assert stop.best_epoch == 2
    assert stop.stopped_epoch == 2 + max(patience, 1)
    assert len(script.weights) >= patience + 2


# -- `restore_best_weights` (Keras's name) and its alias `restore_best` ------


@pytest.mark.parametrize("name", ["restore_best_weights", "restore_best"])
def test_both_names_switch_restoring_off(name):
    model, script, stop = _run([3.0, 1.0, 2.0], **{name: False})
    assert not stop.restored
    assert stop.restore_best_weights is False and stop.restore_best is False
    _assert_weights(model, script.weights[2])


def test_restoring_is_on_by_default_under_both_names():
    stop = EarlyStoppingRestore()
    assert stop.restore_best_weights is True and stop.restore_best is True
    for value in (True, False):
        stop = EarlyStoppingRestore(
            restore_best_weights=value, restore_best=value
        )
        assert stop.restore_best_weights is value


def test_both_names_with_different_values_raise_naming_both():
    with pytest.raises(ValueError) as info:
        EarlyStoppingRestore(restore_best_weights=True, restore_best=False)
    message = str(info.value)
    assert "`restore_best_weights`" in message and "`restore_best`" in message
    assert "restore_best_weights=True" in message
    assert "restore_best=False" in message


def test_alias_attribute_writes_through_and_is_validated():
    stop = EarlyStoppingRestore()
    stop.restore_best = False
    assert stop.restore_best_weights is False
    stop.restore_best_weights = True
    assert stop.restore_best is True
    with pytest.raises(ValueError, match="Received: restore_best='no'"):
        stop.restore_best = "no"
    assert stop.restore_best is True


def test_signature_shows_the_keras_name_and_its_default():
    import inspect

    params = inspect.signature(EarlyStoppingRestore).parameters
    names = list(params)
    # Keras's position for it, so positional calls keep their meaning.
    assert names.index("restore_best_weights") == 6
    assert repr(params["restore_best_weights"].default) == "True"


def test_interrupt_during_the_best_copy_keeps_the_previous_best():
    # The copy of epoch 1's weights dies half-way: the callback restores
    # epoch 0's weights and reports epoch 0, whole.
    stop, model = _driven(monitor="loss", patience=5)
    x, y = _data()
    stop.on_epoch_end(0, {"loss": 2.0})
    kept = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    variables = stop._snapshot._variables
    real = variables[2]

    class Dying:
        def __getattr__(self, name):
            if name == "value":
                raise KeyboardInterrupt
            return getattr(real, name)

    variables[2] = Dying()
    with pytest.raises(KeyboardInterrupt):
        stop.on_epoch_end(1, {"loss": 1.0})
    assert (stop.best, stop.best_epoch) == (2.0, 0)
    assert stop.stop_reason == "interrupted" and stop.restored
    _assert_weights(model, kept)
