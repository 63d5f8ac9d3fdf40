"""Tests for keras_regularize.losses.SparseCategoricalCrossentropy."""

import os
import tempfile

import keras
import numpy as np
import pytest

from keras_regularize.losses import SparseCategoricalCrossentropy
from tests import harness

K = 5


def _data(shape=(8,), seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, size=shape)
    logits = (2.0 * rng.normal(size=shape + (K,))).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, logits, probs.astype("float32")


def _value(loss, *args, **kwargs):
    return float(harness.to_numpy(loss(*args, **kwargs)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_equals_keras_categorical_crossentropy_on_one_hot_labels(
    smoothing, from_logits, label_shape
):
    labels, logits, probs = _data()
    y_pred = logits if from_logits else probs
    y_true = labels if label_shape == "flat" else labels[:, None]
    ours = SparseCategoricalCrossentropy(
        label_smoothing=smoothing, from_logits=from_logits
    )
    reference = keras.losses.CategoricalCrossentropy(
        label_smoothing=smoothing, from_logits=from_logits
    )
    one_hot = np.eye(K, dtype="float32")[labels]
    assert _value(ours, y_true, y_pred) == pytest.approx(
        _value(reference, one_hot, y_pred), rel=1e-5, abs=1e-6
    )


def test_sequences_reductions_and_sample_weights_match_too():
    labels, logits, _ = _data(shape=(4, 6), seed=1)
    weights = np.random.default_rng(2).uniform(size=(4, 6)).astype("float32")
    one_hot = np.eye(K, dtype="float32")[labels]
    for reduction in ("sum_over_batch_size", "sum", None):
        ours = SparseCategoricalCrossentropy(
            0.2, from_logits=True, reduction=reduction
        )
        reference = keras.losses.CategoricalCrossentropy(
            label_smoothing=0.2, from_logits=True, reduction=reduction
        )
        np.testing.assert_allclose(
            harness.to_numpy(ours(labels, logits, sample_weight=weights)),
            harness.to_numpy(reference(one_hot, logits, sample_weight=weights)),
            rtol=1e-5,
            atol=1e-6,
        )


def test_without_smoothing_it_equals_keras_sparse_crossentropy():
    labels, logits, probs = _data(seed=3)
    for y_pred, from_logits in ((logits, True), (probs, False)):
        ours = SparseCategoricalCrossentropy(from_logits=from_logits)
        reference = keras.losses.SparseCategoricalCrossentropy(
            from_logits=from_logits
        )
        assert _value(ours, labels, y_pred) == pytest.approx(
            _value(reference, labels, y_pred), rel=1e-5
        )


def test_class_axis_can_come_first():
    labels, logits, _ = _data(shape=(3, 4), seed=4)
    first = np.moveaxis(logits, -1, 1)  # (B, K, T)
    a = SparseCategoricalCrossentropy(0.1, from_logits=True, axis=1)
    b = SparseCategoricalCrossentropy(0.1, from_logits=True)
    assert _value(a, labels, first) == pytest.approx(
        _value(b, labels, logits), rel=1e-6
    )


def test_smoothing_moves_the_optimum_off_the_hard_label():
    # With smoothing e the loss is minimised by p = (1 - e) * y + e / K.
    e = 0.2
    loss = SparseCategoricalCrossentropy(label_smoothing=e)
    target = np.full((1, K), e / K, "float32")
    target[0, 0] += 1 - e
    hard = np.full((1, K), 1e-3, "float32")
    hard[0, 0] = 1 - 1e-3 * (K - 1)
    assert _value(loss, np.array([0]), target) < _value(
        loss, np.array([0]), hard
    )


def test_config_round_trip_and_registration():
    loss = SparseCategoricalCrossentropy(
        label_smoothing=0.1, from_logits=True, reduction="sum", name="ls"
    )
    config = loss.get_config()
    assert config["label_smoothing"] == 0.1 and config["from_logits"]
    assert SparseCategoricalCrossentropy.from_config(config).get_config() == (
        config
    )
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SparseCategoricalCrossentropy)
    assert restored.get_config() == config


@pytest.mark.parametrize("jit", harness.jit_modes())
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_trains_compiled_and_saves_to_keras_files(jit, policy):
    keras.config.set_dtype_policy(policy)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(K)(inputs))
    model.compile(
        "adam",
        SparseCategoricalCrossentropy(0.1, from_logits=True),
        jit_compile=jit,
    )
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % K
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    keras.config.set_dtype_policy("float32")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, SparseCategoricalCrossentropy)
    assert loaded.loss.label_smoothing == 0.1
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(
        model.evaluate(x, y, verbose=0), rel=1e-4
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"label_smoothing": 1.5},
            "argument `label_smoothing`.*Received: label_smoothing=1.5",
        ),
        (
            {"label_smoothing": -0.1},
            "argument `label_smoothing`.*Received: label_smoothing=-0.1",
        ),
        ({"axis": 1.0}, "argument `axis`.*Received: axis=1.0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseCategoricalCrossentropy(**kwargs)
