"""Tests for keras_regularize.callbacks._step_guard."""

import types

import pytest

from keras_regularize.callbacks._step_guard import GUARD
from keras_regularize.callbacks._step_guard import StepGuard


def _model(fail_with=None):
    model = types.SimpleNamespace(history=object(), calls=0, fail=fail_with)

    def step(x):
        model.calls += 1
        if model.fail is not None:
            raise model.fail
        return x + 1

    model.train_function = model.step = step
    return model


def _guard(errors):
    return StepGuard(on_error=lambda: errors.append("error"))


def test_armed_failing_step_reports_then_raises():
    errors = []
    model = _model(RuntimeError("boom"))
    with _guard(errors).install(model) as guard:
        assert getattr(model.train_function, GUARD) is guard
        guard.arm()
        with pytest.raises(RuntimeError, match="boom"):
            model.train_function(1)
    assert errors == ["error"]
    assert model.train_function is model.step  # removed by the `with`


def test_passing_and_unarmed_steps_are_not_reported():
    errors = []
    model = _model()
    guard = _guard(errors).install(model)
    guard.arm()
    assert model.train_function(1) == 2
    model.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        model.train_function(1)  # not armed: another caller's step
    assert errors == [] and guard.active
    guard.remove()
    assert not guard.active and model.train_function is model.step


@pytest.mark.parametrize(
    "error", [StopIteration, type("OutOfRangeError", (Exception,), {})]
)
def test_end_of_data_is_not_a_failure(error):
    errors = []
    model = _model(error())
    guard = _guard(errors).install(model)
    guard.arm()
    with pytest.raises(error):
        model.train_function(1)
    assert errors == []
    guard.remove()


def test_guard_of_a_finished_fit_removes_itself():
    errors = []
    model = _model()
    guard = _guard(errors).install(model)
    model.history = object()  # a later fit started without `remove`
    guard.arm()
    model.fail = RuntimeError()
    with pytest.raises(RuntimeError):
        model.train_function(1)
    assert errors == [] and not guard.active
    assert model.train_function is model.step


def test_chained_guards_unlink_in_any_order():
    model = _model()
    first, second = _guard([]).install(model), _guard([]).install(model)
    assert getattr(model.train_function, GUARD) is second
    first.remove()  # the inner one
    assert getattr(model.train_function, GUARD) is second
    assert second.inner is model.step
    second.remove()
    assert model.train_function is model.step


def test_reinstalling_drops_the_stale_copy_of_itself():
    model = _model()
    guard = _guard([]).install(model)
    model.history = object()  # the next fit of the same callback
    guard.install(model)
    assert getattr(model.train_function, GUARD) is guard
    assert guard.inner is model.step
    guard.remove()
    assert model.train_function is model.step
