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


def test_from_logits_takes_bools_only():
    assert SparseCategoricalCrossentropy(from_logits=True).from_logits is True
    for value in ("no", 1, 0, None, "False"):
        with pytest.raises(
            ValueError, match=r"argument `from_logits`.*Received: from_logits="
        ):
            SparseCategoricalCrossentropy(from_logits=value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, "0.1"])
def test_label_smoothing_refuses_non_finite_bool_and_str(value):
    with pytest.raises(ValueError, match="argument `label_smoothing`"):
        SparseCategoricalCrossentropy(label_smoothing=value)


def _segmentation_reference(labels, logits, axis):
    log_p = logits - np.log(np.exp(logits).sum(axis, keepdims=True))
    picked = np.take_along_axis(log_p, np.expand_dims(labels, axis), axis)
    return -picked.mean()


@pytest.mark.parametrize("label_shape", ["(B,H,W)", "(B,1,H,W)"])
def test_channels_first_class_axis_takes_both_label_shapes(label_shape):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, K, 3, 4)).astype("float32")
    labels = rng.integers(0, K, size=(2, 3, 4))
    y_true = labels if label_shape == "(B,H,W)" else labels[:, None]
    loss = SparseCategoricalCrossentropy(from_logits=True, axis=1)
    got = _value(loss, y_true, logits)
    assert got == pytest.approx(
        _segmentation_reference(labels, logits, 1), rel=1e-5
    )
    if harness.BACKEND == "torch":
        # Keras's own loss accepts axis=1 only on torch (jax and tensorflow
        # raise on any axis but -1); there the two agree exactly.
        keras_loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, axis=1
        )
        assert got == pytest.approx(_value(keras_loss, y_true, logits), 1e-5)


def test_labels_with_size_one_axis_elsewhere_are_refused():
    logits = np.zeros((2, K, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3, 4, 1\)"):
        SparseCategoricalCrossentropy(axis=1)(
            np.zeros((2, 3, 4, 1), "int32"), logits
        )
    with pytest.raises(ValueError, match=r"y_true.shape=\(3,\).*\(2, 5\)"):
        SparseCategoricalCrossentropy()(
            np.zeros(3, "int32"), logits[:, :, 0, 0]
        )


def test_binary_segmentation_with_class_axis_first():
    # Keras's segmentation case: class axis 0 of (2, 4, 4) predictions.
    labels = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])
    probs = np.eye(2, dtype="float32")[labels]
    probs[0, 3] = [0.2, 0.8]
    loss = SparseCategoricalCrossentropy(axis=0)
    got = _value(loss, labels, np.moveaxis(probs, -1, 0))
    assert got == pytest.approx(-np.log(0.2) / 16, rel=1e-4)


def test_keras_weighting_and_reduction_cases():
    y_true = np.array([[0], [1], [2]])
    y_pred = np.array(
        [[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], "float32"
    )
    ours = SparseCategoricalCrossentropy()
    theirs = keras.losses.SparseCategoricalCrossentropy()
    for weight in (None, 2.3, np.array([[1.2], [3.4], [5.6]])):
        assert _value(ours, y_true, y_pred, sample_weight=weight) == (
            pytest.approx(
                _value(theirs, y_true, y_pred, sample_weight=weight), 1e-5
            )
        )
    assert _value(ours, y_true, np.eye(3, dtype="float32")) < 1e-3
    per_sample = SparseCategoricalCrossentropy(reduction=None)
    np.testing.assert_allclose(
        harness.to_numpy(per_sample(y_true, y_pred)),
        harness.to_numpy(
            keras.losses.SparseCategoricalCrossentropy(reduction=None)(
                y_true, y_pred
            )
        ),
        rtol=1e-5,
    )


@pytest.mark.parametrize("bad", [K, -1, 2.5, float("nan")])
def test_out_of_range_label_raises_naming_the_value_in_eager_calls(bad):
    labels, logits, _ = _data(seed=6)
    labels = labels.astype("float32")
    labels[3] = bad
    loss = SparseCategoricalCrossentropy(from_logits=True)
    pattern = "nan" if bad != bad else f"{bad:g}" if bad != 2.5 else "2.5"
    with pytest.raises(
        ValueError,
        match=rf"argument `y_true`.*\[0, {K - 1}\].*Received: y_true={pattern}",
    ):
        loss(labels, logits)


def _fit_loss(labels, jit):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(K)(inputs))
    model.compile(
        "sgd", SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit
    )
    x = np.random.default_rng(0).normal(size=(len(labels), 4))
    return model.fit(
        x.astype("float32"), labels, batch_size=len(labels), verbose=0
    ).history["loss"][0]


@pytest.mark.parametrize("jit", harness.jit_modes())
@pytest.mark.parametrize("bad", [K, -1])
def test_out_of_range_label_in_fit_raises_or_gives_nan(jit, bad):
    labels = np.arange(8) % K
    labels[5] = bad
    try:
        loss = _fit_loss(labels, jit)
    except harness.data_errors() as error:
        # Eager steps (torch; jax without jit) know the values, and
        # TensorFlow graphs assert on them.
        harness.assert_error_names_value(error, "y_true", bad)
    else:
        # Traced steps cannot raise on data: never a finite wrong loss.
        assert np.isnan(loss), loss
    assert np.isfinite(_fit_loss(np.arange(8) % K, jit))


def test_empty_batch_gives_empty_or_zero_loss():
    loss = SparseCategoricalCrossentropy(from_logits=True)
    value = harness.to_numpy(
        loss(np.zeros((0,), "int32"), np.zeros((0, K), "float32"))
    )
    assert value.size == 0 or float(value) == 0.0
