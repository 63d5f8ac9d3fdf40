"""Tests for keras_regularize.losses.DistillationLoss."""

import json

import keras
import numpy as np
import pytest

from keras_regularize.losses import DistillationLoss
from tests import harness
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


# Inputs are validated (structure, rank, shape, dtype) before anything is
# computed: a ValueError on every backend, never a broadcast or a backend's
# own TypeError/RuntimeError.

S = np.zeros((2, 3), "float32")
Y = np.array([0, 2])


def test_teacher_of_another_shape_is_not_broadcast():
    loss = DistillationLoss()
    with pytest.raises(
        ValueError,
        match=r"student_logits.shape=\(2, 3\) and teacher_logits.shape="
        r"\(2, 1\)",
    ):
        loss(S, np.zeros((2, 1), "float32"), Y)
    with pytest.raises(ValueError, match=r"teacher_logits.shape=\(2, 1\)"):
        loss.distillation(S, np.zeros((2, 1), "float32"))


def test_every_ensemble_teacher_is_checked():
    with pytest.raises(ValueError, match=r"teacher_logits\[1\].shape=\(2, 4\)"):
        DistillationLoss()(S, [S, np.zeros((2, 4), "float32")], Y)
    with pytest.raises(ValueError, match=r"teacher_logits=\[\]"):
        DistillationLoss()(S, [], Y)


@pytest.mark.parametrize(
    "student, teacher, labels, weight, message",
    [
        (S, np.zeros((3, 3), "float32"), Y, None, r"teacher_logits.shape"),
        (S, S, np.array([0, 1, 2]), None, r"labels.shape=\(3,\)"),
        (S, S, np.zeros((2, 2)), None, r"labels.shape=\(2, 2\)"),
        (S, S, Y, np.ones(3), r"sample_weight.shape=\(3,\)"),
        (S, {"logits": S}, Y, None, r"teacher_logits of type dict"),
        (S, S, "labels", None, r"labels of type str"),
        (S, S, np.array([True, False]), None, r"labels with dtype=bool"),
        (S.astype("int32"), S, Y, None, r"student_logits with dtype=int32"),
        (S, np.array([["a"] * 3] * 2), Y, None, r"teacher_logits.*dtype"),
        (np.zeros(3, "float32"), np.zeros(3, "float32"), 0, None, "rank"),
        (None, S, Y, None, r"student_logits of type NoneType"),
    ],
)
def test_bad_inputs_raise_value_error(
    student, teacher, labels, weight, message
):
    with pytest.raises(ValueError, match=message):
        DistillationLoss()(student, teacher, labels, sample_weight=weight)


@pytest.mark.parametrize("bad", [3, -1, 1.5])
def test_out_of_range_hard_label_raises_naming_it(bad):
    labels = np.array([0.0, bad])
    with pytest.raises(
        ValueError, match=rf"argument `labels`.*\[0, 2\].*labels={bad:g}"
    ):
        DistillationLoss()(S, S, labels)


def test_out_of_range_hard_label_inside_a_traced_step_gives_nan():
    loss = DistillationLoss()
    if keras.backend.backend() == "jax":
        import jax

        value = jax.jit(lambda y: loss(S, S, y))(np.array([0, 3]))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # XLA drops graph assertions: NaN is the only signal there.
        step = tf.function(lambda y: loss(S, S, y), jit_compile=True)
        value = step(np.array([0, -1]))
    else:
        pytest.skip("torch steps run eagerly: the eager error applies")
    assert np.isnan(float(to_numpy(value)))


def test_out_of_range_hard_label_in_a_tensorflow_graph_raises_naming_it():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow graphs only")
    import tensorflow as tf

    loss = DistillationLoss()
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        tf.function(lambda y: loss(S, S, y))(np.array([0, -1]))
    harness.assert_error_names_value(info.value, "labels", -1)


def test_empty_batch_gives_zero():
    empty = np.zeros((0, 3), "float32")
    value = DistillationLoss()(empty, empty, np.zeros((0,), "int32"))
    assert float(to_numpy(value)) == 0.0


def test_sample_weight_shapes_agree():
    rng = np.random.default_rng(8)
    s, t = rng.normal(size=(2, 6, 3)).astype("float32")
    y = rng.integers(0, 3, size=6)
    w = rng.uniform(size=6).astype("float32")
    loss = DistillationLoss()
    flat = float(to_numpy(loss(s, t, y, sample_weight=w)))
    column = float(to_numpy(loss(s, t, y, sample_weight=w[:, None])))
    assert flat == pytest.approx(column, rel=1e-6)
    total, _, _ = reference(s, [t], y, 4.0, 0.7, np.full(6, 2.0))
    assert float(to_numpy(loss(s, t, y, sample_weight=2.0))) == (
        pytest.approx(total, rel=1e-5)
    )


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_hyperparameters_are_refused(value):
    with pytest.raises(ValueError, match="argument `temperature`"):
        DistillationLoss(temperature=value)
    with pytest.raises(ValueError, match="argument `alpha`"):
        DistillationLoss(alpha=value)


@pytest.mark.parametrize("value", [1, 0, "no", None])
def test_from_logits_takes_bools_only(value):
    with pytest.raises(ValueError, match="from_logits="):
        DistillationLoss(from_logits=value)


def test_temperature_scales_the_soft_term_by_t_squared():
    # At a large T the tempered KL shrinks as 1/T^2; the T^2 factor keeps
    # the soft term (and its gradient) on a constant scale.
    rng = np.random.default_rng(9)
    s, t = rng.normal(size=(2, 8, 5)).astype("float32")
    values = [
        float(to_numpy(DistillationLoss(temperature=T).distillation(s, t)))
        for T in (20.0, 40.0)
    ]
    assert values[0] == pytest.approx(values[1], rel=0.02)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_selects_one_term(alpha):
    rng = np.random.default_rng(10)
    s, t = rng.normal(size=(2, 8, 5)).astype("float32")
    y = rng.integers(0, 5, size=8)
    loss = DistillationLoss(alpha=alpha)
    term = loss.distillation(s, t) if alpha else loss.hard(s, y)
    assert float(to_numpy(loss(s, t, y))) == pytest.approx(
        float(to_numpy(term)), rel=1e-6
    )
