"""Tests for keras_regularize.callbacks._weight_snapshot (double buffering)."""

import types

import keras
import numpy as np
import pytest
from keras import ops

from keras_regularize.callbacks._weight_snapshot import WeightSnapshot
from tests.harness import BACKEND

# "host" copies with NumPy, which cannot read a torch parameter that
# requires grad; the backend never picks it there.
KINDS = ["variable", "copy"] + (["host"] if BACKEND != "torch" else [])


class _Flaky:
    """A variable whose `value` raises KeyboardInterrupt while `boom`."""

    def __init__(self, variable, model):
        self.variable = variable
        self.model = model

    @property
    def value(self):
        if self.model.boom is self:
            raise KeyboardInterrupt
        return self.variable.value

    @property
    def dtype(self):
        return self.variable.dtype

    def assign(self, value):
        self.variable.assign(value)


def _fake_model(count=4):
    model = types.SimpleNamespace(boom=None)
    model.real = [
        keras.Variable(np.full((2, 3), i, "float32"), name=f"w{i}")
        for i in range(count)
    ]
    model.weights = [_Flaky(v, model) for v in model.real]
    return model


def _numpy(values):
    return [
        np.array(ops.convert_to_numpy(getattr(v, "value", v))) for v in values
    ]


def _set(model, offset):
    for i, v in enumerate(model.real):
        v.assign(np.full((2, 3), i + offset, "float32"))
    return _numpy(model.real)


def _assert_equal(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_nothing_captured_yet():
    snapshot = WeightSnapshot()
    assert not snapshot.captured
    assert snapshot.values is None and snapshot.tag is None
    assert snapshot.restore(_fake_model()) is False


@pytest.mark.parametrize("kind", KINDS)
def test_interrupt_mid_copy_keeps_the_previous_capture(kind):
    model = _fake_model()
    snapshot = WeightSnapshot(kind)
    first = _set(model, 10)
    snapshot.capture(model, tag="first")
    second = _set(model, 20)
    snapshot.capture(model, tag="second")
    for boom in (2, 0, 3):
        # The copy dies after `boom` of the 4 variables were copied, into
        # the buffer that held "first" (the spare one).
        _set(model, 30 + boom)
        model.boom = model.weights[boom]
        with pytest.raises(KeyboardInterrupt):
            snapshot.capture(model, tag="third")
        model.boom = None
        assert snapshot.tag == "second"
        _assert_equal(_numpy(snapshot.values), second)
    assert snapshot.restore(model)
    _assert_equal(_numpy(model.real), second)
    # It goes on working after the interrupts.
    fourth = _set(model, 40)
    snapshot.capture(model, tag="fourth")
    assert snapshot.tag == "fourth"
    _assert_equal(_numpy(snapshot.values), fourth)
    _set(model, 50)
    snapshot.restore(model)
    _assert_equal(_numpy(model.real), fourth)
    assert not np.array_equal(first[0], fourth[0])


@pytest.mark.parametrize("kind", KINDS)
def test_interrupt_in_the_first_capture_leaves_nothing(kind):
    model = _fake_model()
    snapshot = WeightSnapshot(kind)
    model.boom = model.weights[1]
    with pytest.raises(KeyboardInterrupt):
        snapshot.capture(model, tag=0)
    model.boom = None
    assert not snapshot.captured and snapshot.restore(model) is False
    expected = _set(model, 5)
    snapshot.capture(model, tag=1)
    _assert_equal(_numpy(snapshot.values), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_captures_are_copies_not_views(kind):
    model = _fake_model()
    snapshot = WeightSnapshot(kind)
    kept = _set(model, 1)
    snapshot.capture(model)
    _set(model, 2)
    _assert_equal(_numpy(snapshot.values), kept)
    snapshot.restore(model)
    _assert_equal(_numpy(model.real), kept)
    _set(model, 3)  # the restored weights do not write through
    _assert_equal(_numpy(snapshot.values), kept)


def test_buffers_alternate_and_are_reused():
    model = _fake_model()
    snapshot = WeightSnapshot("variable")
    snapshot.capture(model)
    a = snapshot.values
    snapshot.capture(model)
    b = snapshot.values
    snapshot.capture(model)
    assert a is not b and snapshot.values is a
    assert all(x is y for x, y in zip(snapshot.values, a))


@pytest.mark.skipif(BACKEND == "torch", reason="host copies: jax, tensorflow")
def test_host_buffer_handed_to_restore_is_never_written_again():
    # JAX may alias a NumPy array given to `assign`.
    model = _fake_model()
    snapshot = WeightSnapshot("host")
    kept = _set(model, 1)
    snapshot.capture(model)
    restored = snapshot.values
    snapshot.restore(model)
    for offset in (2, 3, 4):
        _set(model, offset)
        snapshot.capture(model)
    _assert_equal(restored, kept)


def test_kind_comes_from_the_backend(monkeypatch):
    from keras_regularize import _backend

    monkeypatch.setattr(_backend, "weight_snapshot_kind", lambda: "copy")
    snapshot = WeightSnapshot()
    snapshot.capture(_fake_model())
    assert snapshot.kind == "copy"


def test_another_model_is_refused():
    snapshot = WeightSnapshot("variable")
    snapshot.capture(_fake_model())
    other = _fake_model()
    with pytest.raises(ValueError, match="another model"):
        snapshot.restore(other)
    with pytest.raises(ValueError, match="another model"):
        snapshot.capture(other)


def test_real_model_round_trip():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    snapshot = WeightSnapshot()
    snapshot.capture(model, tag="init")
    kept = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1.0 for w in kept])
    assert snapshot.restore(model) and snapshot.tag == "init"
    _assert_equal(model.get_weights(), kept)
