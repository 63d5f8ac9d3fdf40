"""Small models and data shared by the optimizer and callback tests."""

import os
import tempfile

import keras
import numpy as np

from tests import harness

N, D, K = 16, 6, 3


def data(seed=0, n=N, d=D, k=K, scale=3.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(n, d))).astype("float32")
    y = rng.normal(size=(n, k)).astype("float32")
    return x, y


def mlp(seed=1, d=D, k=K, dtype=None):
    """A two-layer MLP with fixed weights (same seed, same weights)."""
    model = keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(8, activation="tanh", dtype=dtype),
            keras.layers.Dense(k, dtype=dtype),
        ]
    )
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in model.weights]
    )
    return model


def linear(weights, bias):
    """`y = x @ weights + bias`, whose MSE gradient has a closed form."""
    d, k = weights.shape
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
    model.set_weights([weights, bias])
    return model


def linear_grads(x, y, weights, bias):
    """Float64 gradients of `mean((x @ W + b - y) ** 2)` for W and b."""
    x, y = x.astype("float64"), y.astype("float64")
    residual = x @ weights + bias - y
    scale = 2.0 / residual.size
    return scale * x.T @ residual, scale * residual.sum(axis=0)


def weights(model):
    return [harness.to_numpy(w) for w in model.weights]


def save_and_load(model):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return keras.saving.load_model(path)


def optimizer_values(optimizer):
    return [harness.to_numpy(v) for v in optimizer.variables]
