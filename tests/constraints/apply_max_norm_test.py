"""Tests for keras_regularize.constraints.apply_max_norm."""

import os

import keras
import numpy as np
import pytest

from keras_regularize.constraints import MaxNorm
from keras_regularize.constraints import apply_max_norm
from tests.harness import jit_modes
from tests.harness import to_numpy

LIMIT = 0.5
L = keras.layers


def _fan_in_columns(w):
    # (..., out): one unit per last-axis entry.
    return w.reshape(-1, w.shape[-1])


def _transpose_columns(w):
    # (..., out, in): one unit per output filter, axis -2.
    return _fan_in_columns(np.moveaxis(w, -2, -1))


def _depthwise_columns(w):
    # (..., in, multiplier): one unit per (channel, multiplier) pair.
    return w.reshape(-1, w.shape[-2] * w.shape[-1])


def _rows(w):
    return w.T


# name -> (layer factory, input shape, [(variable name, unit columns)])
CASES = {
    "Dense": (lambda: L.Dense(6), (5,), [("kernel", _fan_in_columns)]),
    "Conv1D": (lambda: L.Conv1D(4, 3), (8, 3), [("kernel", _fan_in_columns)]),
    "Conv2D": (
        lambda: L.Conv2D(4, 3),
        (6, 6, 3),
        [("kernel", _fan_in_columns)],
    ),
    "Conv3D": (
        lambda: L.Conv3D(2, 2),
        (4, 4, 4, 2),
        [("kernel", _fan_in_columns)],
    ),
    "Conv1DTranspose": (
        lambda: L.Conv1DTranspose(4, 3),
        (6, 3),
        [("kernel", _transpose_columns)],
    ),
    "Conv2DTranspose": (
        lambda: L.Conv2DTranspose(4, 3),
        (4, 4, 3),
        [("kernel", _transpose_columns)],
    ),
    "Conv3DTranspose": (
        lambda: L.Conv3DTranspose(2, 2),
        (3, 3, 3, 2),
        [("kernel", _transpose_columns)],
    ),
    "DepthwiseConv1D": (
        lambda: L.DepthwiseConv1D(3, depth_multiplier=2),
        (8, 3),
        [("kernel", _depthwise_columns)],
    ),
    "DepthwiseConv2D": (
        lambda: L.DepthwiseConv2D(3, depth_multiplier=2),
        (6, 6, 3),
        [("kernel", _depthwise_columns)],
    ),
    "SeparableConv2D": (
        lambda: L.SeparableConv2D(4, 3, depth_multiplier=2),
        (6, 6, 3),
        [
            ("depthwise_kernel", _depthwise_columns),
            ("pointwise_kernel", _fan_in_columns),
        ],
    ),
    "Embedding": (lambda: L.Embedding(10, 6), (7,), [("embeddings", _rows)]),
}


def _model(name):
    factory, shape, _ = CASES[name]
    dtype = "int32" if name == "Embedding" else "float32"
    inputs = keras.Input(shape, dtype=dtype)
    layer = factory()
    x = L.Flatten()(layer(inputs))
    return keras.Model(inputs, L.Dense(1)(x)), layer


def _inputs(name, n=16):
    _, shape, _ = CASES[name]
    rng = np.random.default_rng(0)
    if name == "Embedding":
        return rng.integers(0, 10, size=(n,) + shape).astype("int32")
    return rng.normal(size=(n,) + shape).astype("float32")


def _column_norms(w, columns):
    return np.sqrt(np.sum(np.square(columns(w).astype("float64")), axis=0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_high_learning_rate_training_keeps_every_unit_under_the_limit(name):
    model, layer = _model(name)
    assert apply_max_norm(model, LIMIT) is model
    model.compile(
        optimizer=keras.optimizers.SGD(5.0),
        loss="mse",
        jit_compile=jit_modes()[-1],
    )
    x = _inputs(name)
    y = np.full((len(x), 1), 50.0, "float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for attr, columns in CASES[name][2]:
        w = to_numpy(getattr(layer, attr))
        norms = _column_norms(w, columns)
        assert np.isfinite(w).all()
        assert norms.max() <= LIMIT + 1e-6, (attr, norms.max())
        # The high learning rate pushed some units to the limit.
        assert norms.max() >= LIMIT * (1 - 1e-5), (attr, norms.max())
    head = to_numpy(model.layers[-1].kernel)
    assert _column_norms(head, _fan_in_columns).max() <= LIMIT + 1e-6


def test_eager_training_too():
    model, layer = _model("Conv2DTranspose")
    apply_max_norm(model, LIMIT)
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    model.run_eagerly = True
    x = _inputs("Conv2DTranspose", n=8)
    model.fit(x, np.full((8, 1), 50.0), batch_size=8, verbose=0)
    norms = _column_norms(to_numpy(layer.kernel), _transpose_columns)
    assert LIMIT * (1 - 1e-5) <= norms.max() <= LIMIT + 1e-6


def test_before_build_nested_models_and_keras_file(tmp_path):
    inner = keras.Sequential([L.Conv2DTranspose(3, 2), L.Flatten()])
    model = keras.Sequential([inner, L.Dense(2)])  # not built yet
    apply_max_norm(model, 1.0)
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")
    model.fit(x, np.full((8, 2), 50.0), verbose=0)
    kernel = inner.layers[0].kernel
    assert isinstance(kernel.constraint, MaxNorm)
    assert kernel.constraint.axis == (0, 1, 3)
    norms = _column_norms(to_numpy(kernel), _transpose_columns)
    assert norms.max() <= 1.0 + 1e-6
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    constraint = loaded.layers[0].layers[0].kernel.constraint
    assert isinstance(constraint, MaxNorm)
    assert (constraint.axis, constraint.max_value) == ((0, 1, 3), 1.0)


def test_replaces_existing_constraints_and_leaves_biases():
    layer = L.Dense(3, kernel_constraint="non_neg")
    model = keras.Sequential([keras.Input((2,)), layer])
    apply_max_norm(model, 2.0)
    assert isinstance(layer.kernel.constraint, MaxNorm)
    assert layer.bias.constraint is None


def test_warns_when_nothing_matches():
    model = keras.Sequential([keras.Input((2,)), L.ReLU()])
    with pytest.warns(UserWarning, match="nothing was constrained"):
        apply_max_norm(model)


def test_bad_max_value():
    model = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    with pytest.raises(ValueError, match="argument `max_value`.*=0"):
        apply_max_norm(model, 0)
