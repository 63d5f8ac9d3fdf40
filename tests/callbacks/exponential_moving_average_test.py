"""Tests for keras_regularize.callbacks.ExponentialMovingAverage."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_regularize as kr
from keras_regularize.callbacks import EarlyStoppingRestore
from keras_regularize.callbacks.exponential_moving_average import (
    ExponentialMovingAverage as EMA,
)
from tests.harness import BACKEND
from tests.harness import assert_error_names_value

TOL = 1e-5
DECAY = 0.5  # warmup (1 + t) / (10 + t) governs steps 1-8, the decay 9-12


def _numpy(value):
    return np.array(keras.ops.convert_to_numpy(value))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _model(jit_compile=False, optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.05),
        loss="mse",
        jit_compile=jit_compile,
    )
    return model


def _trainable_mask(model):
    return [v.trainable for v in model.weights]


def manual_ema(steps, decay, warmup=True, skip_unchanged=False):
    """The EMA of `steps[1:]` from `steps[0]`.

    With `skip_unchanged`, a step that left the weights as they were (a
    skipped loss-scale step, a gradient accumulation step) is no step.
    """
    average = [w.astype("float64") for w in steps[0]]
    t = 0
    for b, weights in enumerate(steps[1:], start=1):
        if skip_unchanged and _max_diff(weights, steps[b - 1]) == 0.0:
            continue
        t += 1
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        average = [d * a + (1 - d) * w for a, w in zip(average, weights)]
    return average, t


class Recorder(keras.callbacks.Callback):
    """Raw trainable weights of every step, and what each epoch shows."""

    def __init__(self, ema=None):
        super().__init__()
        self.ema = ema
        self.tests = 0

    def _trainable(self):
        return [_numpy(w) for w in self.model.trainable_weights]

    def on_train_begin(self, logs=None):
        self.steps = [self._trainable()]
        self.epoch_start = []
        self.averaged, self.raw, self.step_count = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start.append(self._trainable())

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self._trainable())

    def on_test_begin(self, logs=None):
        self.tests += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.ema is not None:
            self.averaged.append(self.ema.averaged_weights())
            self.raw.append(self.ema.raw_weights())
            self.step_count.append(len(self.steps) - 1)


def _trainable_of(model, weights):
    return [w for w, t in zip(weights, _trainable_mask(model)) if t]


def _max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def _fit_with_stop(order):
    """3 epochs; validation targets drift away, so epoch 0 is the best."""
    jit = BACKEND != "torch"  # torch.compile runs in the slow test
    model = _model(jit_compile=jit)
    x, y = _data()
    ema = EMA(decay=DECAY)
    recorder = Recorder(ema)
    stop = EarlyStoppingRestore(monitor="val_ema_loss", patience=5)
    callbacks = [
        recorder,
        *([stop, ema] if order == "stop_first" else [ema, stop]),
    ]
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        shuffle=False,
        validation_data=(x, np.zeros_like(y)),
        callbacks=callbacks,
        verbose=0,
    )
    return {
        "model": model,
        "ema": ema,
        "stop": stop,
        "recorder": recorder,
        "history": history.history,
        "final": [_numpy(w) for w in model.weights],
    }


@pytest.fixture(scope="module")
def run():
    return _fit_with_stop("stop_first")


@pytest.fixture(scope="module")
def run_reversed():
    return _fit_with_stop("ema_first")


# -- the update rule ---------------------------------------------------------


def test_update_rule_is_exact_inside_the_compiled_step(run):
    # jit_compile=True on JAX and TensorFlow: the average must really move
    # (a state the JAX trainer does not thread through would stay put).
    model, ema, recorder = run["model"], run["ema"], run["recorder"]
    for epoch, count in enumerate(recorder.step_count):
        expected, t = manual_ema(recorder.steps[: count + 1], DECAY)
        got = _trainable_of(model, recorder.averaged[epoch])
        assert _max_diff(got, expected) < TOL
    assert ema.steps == 12 == t
    assert _max_diff(expected, recorder.steps[0]) > 1e-2


def test_batch_norm_statistics_are_not_averaged(run):
    # Non-trainable state: the averaged model uses the raw statistics.
    model, recorder = run["model"], run["recorder"]
    mask = _trainable_mask(model)
    for averaged, raw in zip(recorder.averaged, recorder.raw):
        for a, r, trainable in zip(averaged, raw, mask):
            if not trainable:
                np.testing.assert_array_equal(a, r)
    moving_mean = mask.index(False)
    assert not np.allclose(recorder.raw[0][moving_mean], 0.0)


def test_averages_are_float32_and_leave_the_optimizer_after_fit(run):
    model, ema = run["model"], run["ema"]
    assert {str(a.dtype) for a in ema._averages} == {"float32"}
    # SGD without momentum: the iteration count and the learning rate.
    assert len(model.optimizer.variables) == 2
    assert "evaluate" not in vars(model)
    assert "apply" not in vars(model.optimizer)


# -- side-by-side metrics ------------------------------------------------------


def test_averaged_metrics_beside_raw_ones(run):
    history, recorder = run["history"], run["recorder"]
    assert sorted(history) == ["loss", "val_ema_loss", "val_loss"]
    assert len(history["val_ema_loss"]) == 3
    x, y = _data()
    clone = keras.models.clone_model(run["model"])
    clone.compile(loss="mse")
    for epoch in range(3):
        clone.set_weights(recorder.averaged[epoch])
        averaged = clone.evaluate(x, np.zeros_like(y), batch_size=8, verbose=0)
        clone.set_weights(recorder.raw[epoch])
        raw = clone.evaluate(x, np.zeros_like(y), batch_size=8, verbose=0)
        np.testing.assert_allclose(
            history["val_ema_loss"][epoch], averaged, rtol=1e-4
        )
        np.testing.assert_allclose(history["val_loss"][epoch], raw, rtol=1e-4)
    assert history["val_ema_loss"] != history["val_loss"]


def test_raw_weights_are_back_when_each_epoch_starts(run):
    recorder = run["recorder"]
    for epoch in (1, 2):
        last_step = recorder.steps[recorder.step_count[epoch - 1]]
        assert _max_diff(recorder.epoch_start[epoch], last_step) == 0.0


def test_callbacks_see_one_evaluation_per_epoch(run):
    assert run["recorder"].tests == 3


# -- EarlyStoppingRestore ----------------------------------------------------


def test_early_stopping_restores_the_averaged_best_weights(run):
    stop, recorder = run["stop"], run["recorder"]
    assert stop.best_epoch == 0 and stop.restored
    assert _max_diff(run["final"], recorder.averaged[0]) < TOL
    assert _max_diff(run["final"], recorder.raw[0]) > 1e-3


def test_callback_order_does_not_matter(run, run_reversed):
    for key, values in run["history"].items():
        np.testing.assert_allclose(values, run_reversed["history"][key])
    assert run_reversed["stop"].best_epoch == run["stop"].best_epoch
    assert _max_diff(run["final"], run_reversed["final"]) < TOL


def test_final_accessors_after_a_restore(run):
    # averaged_weights()/raw_weights() are the run's final ones, whatever
    # EarlyStoppingRestore put in place.
    ema, recorder = run["ema"], run["recorder"]
    assert _max_diff(ema.averaged_weights(), recorder.averaged[-1]) < TOL
    assert _max_diff(ema.raw_weights(), recorder.raw[-1]) == 0.0


def test_keras_file_round_trip_without_custom_objects(run, tmp_path):
    path = os.path.join(tmp_path, "model.keras")
    run["model"].save(path)
    loaded = keras.models.load_model(path)
    x, _ = _data()
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), run["model"].predict(x, verbose=0)
    )


def test_missing_key_warning_names_both_callbacks():
    x, y = _data(8)
    for callbacks, needle in (
        ([EMA(evaluate=False)], "evaluate=False"),
        ([], "none is in this fit's callbacks"),
    ):
        model = _model()
        stop = EarlyStoppingRestore(monitor="val_ema_loss")
        with pytest.warns(UserWarning) as caught:
            model.fit(
                x,
                y,
                validation_data=(x, y),
                callbacks=[stop, *callbacks],
                verbose=0,
            )
        text = " ".join(str(w.message) for w in caught)
        assert "EarlyStoppingRestore" in text
        assert "ExponentialMovingAverage" in text and needle in text


# -- final, warmup, checkpoint, validation_freq ------------------------------


def test_final_raw_without_warmup_with_checkpoint(tmp_path):
    path = os.path.join(tmp_path, "ema.weights.h5")
    model = _model()
    x, y = _data()
    ema = EMA(decay=0.7, warmup=False, final="raw", checkpoint_path=path)
    recorder = Recorder(ema)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        shuffle=False,
        validation_data=(x, y),
        validation_freq=2,
        callbacks=[recorder, ema],
        verbose=0,
    )
    # Validation (raw and averaged) only in epoch 2 of 3.
    assert len(history.history["val_ema_loss"]) == 1
    assert len(history.history["val_loss"]) == 1
    expected, _ = manual_ema(recorder.steps, 0.7, warmup=False)
    assert (
        _max_diff(_trainable_of(model, ema.averaged_weights()), expected) < TOL
    )
    # final="raw": the model keeps its trained weights.
    assert (
        _max_diff(_trainable_of(model, ema.raw_weights()), recorder.steps[-1])
        == 0
    )
    assert _max_diff([_numpy(w) for w in model.weights], ema.raw_weights()) == 0
    # The checkpoint holds the average of the last epoch end.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_weights(path)
    assert (
        _max_diff([_numpy(w) for w in model.weights], ema.averaged_weights())
        < TOL
    )


# -- state ---------------------------------------------------------------------


def test_state_resumes_the_same_average():
    x, y = _data()
    kwargs = dict(batch_size=8, shuffle=False, verbose=0)
    whole = EMA(decay=DECAY, final="raw")
    _model().fit(x, y, epochs=2, callbacks=[whole], **kwargs)

    model = _model()
    first = EMA(decay=DECAY, final="raw")
    model.fit(x, y, epochs=1, callbacks=[first], **kwargs)
    state = first.get_state()
    assert state["count"] == 4 and state["prefix"] == "ema"
    second = EMA(decay=DECAY, final="raw")
    second.set_state(state)
    model.fit(x, y, epochs=1, callbacks=[second], **kwargs)
    assert second.steps == whole.steps == 8
    assert (
        _max_diff(second.get_state()["averages"], whole.get_state()["averages"])
        < TOL
    )
    # Without set_state, a new fit starts a new average.
    model.fit(x, y, epochs=1, callbacks=[second], **kwargs)
    assert second.steps == 4


def test_set_state_checks_what_it_gets(run):
    ema = EMA()
    with pytest.raises(ValueError, match="`state`"):
        ema.set_state({"prefix": "swa", "averages": []})
    with pytest.raises(ValueError, match="`state`"):
        ema.set_state([1, 2])
    fitted = run["ema"]
    bad = dict(fitted.get_state(), averages=[np.zeros(3)])
    with pytest.raises(ValueError, match="averages of shapes"):
        fitted.set_state(bad)


def test_accessors_before_fit_raise():
    for method in ("averaged_weights", "raw_weights", "get_state"):
        with pytest.raises(ValueError, match="pass it to `fit`"):
            getattr(EMA(), method)()


def test_evaluate_and_predict_with_the_callback_leave_the_model_alone(run):
    model = run["model"]
    x, y = _data(8)
    count = len(model.optimizer.variables)
    ema = EMA()
    model.evaluate(x, y, callbacks=[ema], verbose=0)
    model.predict(x, callbacks=[ema], verbose=0)
    assert len(model.optimizer.variables) == count
    assert "apply" not in vars(model.optimizer)


class _Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("boom")


def test_a_fit_left_by_an_exception_is_unhooked_by_the_next_fit():
    model = _model()
    x, y = _data(16)
    ema = EMA()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, batch_size=8, callbacks=[ema, _Boom()], verbose=0)
    assert "apply" in vars(model.optimizer)  # Keras called no hook
    model.fit(x, y, batch_size=8, verbose=0)  # a plain fit unhooks it
    assert len(model.optimizer.variables) == 2
    assert "apply" not in vars(model.optimizer)
    assert "make_train_function" not in vars(model)
    model.fit(x, y, batch_size=8, callbacks=[ema], verbose=0)  # reusable
    assert ema.steps == 2 and len(model.optimizer.variables) == 2


# -- precision, wrappers, models -----------------------------------------------


@pytest.mark.parametrize(
    "policy, accumulate",
    [("mixed_float16", None), ("mixed_bfloat16", 2)],
    ids=["float16-clipping", "bfloat16-accumulation"],
)
def test_mixed_precision_and_optimizer_wrappers(policy, accumulate):
    keras.config.set_dtype_policy(policy)
    try:
        inner = keras.optimizers.SGD(
            0.05, gradient_accumulation_steps=accumulate
        )
        optimizer = (
            inner
            if accumulate
            else kr.optimizers.GradientClipping(inner, threshold=1.0)
        )
        model = _model(jit_compile=BACKEND != "torch", optimizer=optimizer)
        x, y = _data()
        ema = EMA(decay=DECAY)
        recorder = Recorder()
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=1,
            shuffle=False,
            callbacks=[recorder, ema],
            verbose=0,
        )
    finally:
        keras.config.set_dtype_policy("float32")
    # mixed_float16: LossScaleOptimizer(GradientClipping(SGD)), whose first
    # steps overflow and are skipped (how many depends on the backend);
    # accumulation updates every 2nd step.
    expected, t = manual_ema(recorder.steps, DECAY, skip_unchanged=True)
    assert ema.steps == t and (t == 2 if accumulate else 1 <= t < 4)
    assert {str(a.dtype) for a in ema._averages} == {"float32"}
    assert (
        _max_diff(_trainable_of(model, ema.averaged_weights()), expected) < 1e-4
    )


def _classifier(width, name):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(width, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)


def test_distiller_averages_the_student_only():
    keras.utils.set_random_seed(0)
    teacher = _classifier(8, "teacher")
    teacher_weights = [_numpy(w) for w in teacher.weights]
    model = kr.models.Distiller(
        student=_classifier(4, "student"), teacher=teacher
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x, _ = _data(16)
    y = (x[:, 0] > 0).astype("int32")
    ema = EMA(decay=DECAY)
    history = model.fit(
        x, y, batch_size=8, validation_data=(x, y), callbacks=[ema], verbose=0
    )
    assert "val_ema_loss" in history.history
    student = {id(v) for v in model.student.trainable_variables}
    assert {id(v) for v in ema._sources} == student
    assert _max_diff([_numpy(w) for w in teacher.weights], teacher_weights) == 0


def test_mixing_model():
    keras.utils.set_random_seed(0)
    model = kr.models.MixingModel(
        _classifier(4, "net"), kr.layers.MixupLayer(alpha=0.4, seed=1)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, _ = _data(16)
    y = (x[:, 0] > 0).astype("int32")
    ema = EMA(decay=DECAY)
    recorder = Recorder()
    history = model.fit(
        x,
        y,
        batch_size=8,
        shuffle=False,
        validation_data=(x, y),
        callbacks=[recorder, ema],
        verbose=0,
    )
    assert "val_ema_loss" in history.history
    expected, _ = manual_ema(recorder.steps, DECAY)
    assert (
        _max_diff(_trainable_of(model, ema.averaged_weights()), expected) < TOL
    )


# -- arguments ---------------------------------------------------------------


BAD_ARGUMENTS = [
    *[
        ("decay", v)
        for v in (0, 1, 0.0, 1.0, -0.5, 1.5, float("nan"), float("inf"))
    ],
    *[("decay", v) for v in (True, "0.9", None)],
    *[(flag, v) for flag in ("warmup", "evaluate") for v in (1, "yes", None)],
    *[("final", v) for v in ("best", None, True, 0)],
    *[("checkpoint_path", v) for v in ("ema.h5", "ema.keras", 3, "")],
]


def test_bad_arguments_name_the_argument_and_value():
    for name, value in BAD_ARGUMENTS:
        with pytest.raises(ValueError) as error:
            EMA(**{name: value})
        assert_error_names_value(error.value, name, repr(value))


@pytest.mark.slow
def test_torch_compile_and_jit_everywhere():
    # jit_compile=True on every backend (torch.compile on torch).
    model = _model(jit_compile=True)
    x, y = _data()
    ema = EMA(decay=DECAY)
    recorder = Recorder()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        validation_data=(x, y),
        callbacks=[recorder, ema],
        verbose=0,
    )
    expected, _ = manual_ema(recorder.steps, DECAY)
    assert (
        _max_diff(_trainable_of(model, ema.averaged_weights()), expected) < TOL
    )
