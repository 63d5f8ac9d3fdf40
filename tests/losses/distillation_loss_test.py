"""Tests for keras_regularize.losses.DistillationLoss."""

import json

import keras
import numpy as np
import pytest

from keras_regularize.losses import DistillationLoss
from tests.harness import gradient
from tests.harness import to_numpy


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(s, teachers, labels, T, alpha, weight=None):
    """NumPy float64 reference of the documented formula."""
    s = np.asarray(s, np.float64)
    teachers = [np.asarray(t, np.float64) for t in np.atleast_3d(teachers)]
    p_t = np.mean([np.exp(_log_softmax(t / T)) for t in teachers], axis=0)
    log_s = _log_softmax(s / T)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p_t > 0, p_t * (np.log(p_t) - log_s), 0.0).sum(-1)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        ce = -(labels * _log_softmax(s)).sum(-1)
    else:
        ce = -_log_softmax(s)[np.arange(len(s)), labels]
    w = np.ones(len(s)) if weight is None else np.asarray(weight, np.float64)
    soft = (w * T * T * kl).sum() / len(s)
    hard = (w * ce).sum() / len(s)
    return alpha * soft + (1 - alpha) * hard, soft, hard


def _teachers(rng, n, c, k, scale):
    return [rng.normal(size=(n, c)).astype("float32") * scale for _ in range(k)]


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("ensemble", [1, 3])
def test_matches_numpy_reference(scale, one_hot, ensemble):
    rng = np.random.default_rng(int(scale) + ensemble + 7 * one_hot)
    n, c = 16, 10
    s = (rng.normal(size=(n, c)) * scale).astype("float32")
    teachers = _teachers(rng, n, c, ensemble, scale)
    labels = rng.integers(0, c, size=n)
    if one_hot:
        labels = np.eye(c, dtype="float32")[labels]
    weight = rng.uniform(0.0, 2.0, size=n).astype("float32")
    loss = DistillationLoss(temperature=3.0, alpha=0.6)
    t_arg = teachers[0] if ensemble == 1 else teachers
    total, soft, hard = reference(s, teachers, labels, 3.0, 0.6, weight)
    got = float(loss(s, t_arg, labels, sample_weight=weight))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, total, rtol=1e-5)
    np.testing.assert_allclose(
        float(loss.distillation(s, t_arg, weight)), soft, rtol=1e-5
    )
    np.testing.assert_allclose(
        float(loss.hard(s, labels, weight)), hard, rtol=1e-5
    )


def test_unweighted_and_column_labels():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 8, 4)).astype("float32")
    labels = rng.integers(0, 4, size=(8, 1))
    total, _, _ = reference(s, [t], labels[:, 0], 4.0, 0.7)
    np.testing.assert_allclose(
        float(DistillationLoss()(s, t, labels)), total, rtol=1e-5
    )


def test_probabilities_when_not_from_logits():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(2, 8, 5))
    labels = rng.integers(0, 5, size=8)
    softmax = lambda z: np.exp(_log_softmax(z))  # noqa: E731
    expected, _, _ = reference(s, [t], labels, 2.0, 0.5)
    loss = DistillationLoss(temperature=2.0, alpha=0.5, from_logits=False)
    probs_s, probs_t = (
        softmax(s).astype("float32"),
        softmax(t).astype("float32"),
    )
    got = loss(probs_s, probs_t, labels)
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_fixes_keras_logits_distillation_default():
    # The worked example of the issue: T^2 * KL on softmaxes is 0.4047.
    s = np.array([[2.0, 1.0, 0.1]], "float32")
    t = np.array([[3.0, 0.5, -1.0]], "float32")
    ours = float(DistillationLoss(temperature=4.0).distillation(s, t))
    _, expected, _ = reference(s, [t], [0], 4.0, 0.7)
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    np.testing.assert_allclose(ours, 0.4047, atol=1e-4)
    keras_default = keras.distillation.LogitsDistillation(temperature=4.0)
    theirs = float(to_numpy(keras_default.compute_loss(t, s)))
    assert abs(theirs - ours) > 0.1, theirs  # Keras 3.15.1: 0.2175


def test_identical_distributions_give_zero_soft_term():
    z = np.random.default_rng(3).normal(size=(6, 7)).astype("float32") * 50
    np.testing.assert_allclose(
        float(DistillationLoss().distillation(z, z)), 0.0, atol=1e-5
    )


def test_gradient_is_finite_and_matches_softmax_difference():
    rng = np.random.default_rng(4)
    s = (rng.normal(size=(4, 6)) * 1e3).astype("float32")
    t = (rng.normal(size=(4, 6)) * 1e3).astype("float32")
    T = 4.0
    loss = DistillationLoss(temperature=T)
    g = gradient(lambda z: loss.distillation(z, t), s)
    assert np.all(np.isfinite(g))
    # d(T^2 KL)/ds = T * (softmax(s/T) - softmax(t/T)) / batch.
    ps = np.exp(_log_softmax(s.astype(np.float64) / T))
    pt = np.exp(_log_softmax(t.astype(np.float64) / T))
    np.testing.assert_allclose(g, T * (ps - pt) / 4, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -1.0, "4"])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="argument `temperature`.*Received"):
        DistillationLoss(temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"`alpha`.*\[0, 1\].*alpha="):
        DistillationLoss(alpha=alpha)


def test_bad_from_logits():
    with pytest.raises(ValueError, match="`from_logits`"):
        DistillationLoss(from_logits="yes")


def test_config_round_trip():
    loss = DistillationLoss(temperature=2.5, alpha=0.3, from_logits=False)
    config = loss.get_config()
    json.dumps(config)
    assert DistillationLoss.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is DistillationLoss
    assert restored.get_config() == config
