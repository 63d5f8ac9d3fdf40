"""Tests for keras_regularize.models.MixingModel."""

import json
import os
import tempfile
import zipfile

import keras
import numpy as np
import pytest

from keras_regularize.layers import CutMixLayer
from keras_regularize.layers import MixupLayer
from keras_regularize.layers import RandomMix
from keras_regularize.models import MixingModel
from tests import harness

CLASSES = 3


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = (x[:, :3].mean(axis=(1, 2, 3)) > 0).astype("int32")
    y = y + (x[:, :, :3].mean(axis=(1, 2, 3)) > 0).astype("int32")
    return x, y


def classifier():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES),
        ]
    )


def sparse_ce(**kwargs):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


MIXERS = {
    "mixup": lambda: MixupLayer(alpha=1.0, mode="elem", seed=1),
    "cutmix": lambda: CutMixLayer(mode="elem", seed=1),
    "random": lambda: RandomMix(mode="pair", seed=1),
}


@pytest.mark.parametrize(
    "mixer, jit",
    [
        ("mixup", harness.jit_modes()[0]),
        ("cutmix", harness.jit_modes()[-1]),
        ("random", harness.jit_modes()[-1]),
    ],
)
def test_training_lowers_the_loss_with_integer_labels(mixer, jit):
    x, y = data()
    model = MixingModel(classifier(), MIXERS[mixer]())
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss=sparse_ce(), jit_compile=jit
    )
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < before - 0.1, (before, after)


class Draw(keras.layers.Layer):
    def __init__(self, mixer):
        super().__init__()
        self.mixer = mixer

    def call(self, x):
        return self.mixer.mix_images(x)


def twin_draws(mixer_factory, x, jit):
    """The draws a fresh mixer makes, compiled as the training step was.

    TensorFlow's random ops give different streams under XLA and outside
    it, so the twin must run the same way as the step it reproduces.
    """
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, Draw(mixer_factory())(inputs))
    model.compile(jit_compile=jit)
    return model.predict(x, batch_size=len(x), verbose=0)


def hand_loss(model, mixer_factory, x, y, one_hot=False, jit=False):
    """lam * CE(y_i) + (1 - lam) * CE(y_j), with a twin mixer's draws."""
    mixed, lam, partner = twin_draws(mixer_factory, x, jit)
    logits = harness.to_numpy(model.model(mixed, training=False))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    lam, partner = harness.to_numpy(lam), harness.to_numpy(partner)
    ids = y.argmax(axis=1) if one_hot else y
    own = -logp[np.arange(len(ids)), ids]
    other = -logp[np.arange(len(ids)), ids[partner]]
    return float(np.mean(lam * own + (1 - lam) * other)), lam


@pytest.mark.parametrize(
    "one_hot, jit",
    [(False, j) for j in harness.jit_modes()]
    + [(True, harness.jit_modes()[-1])],
)
def test_step_loss_is_the_two_term_formula(one_hot, jit):
    x, y = data(n=16)
    factory = MIXERS["cutmix" if one_hot else "mixup"]
    model = MixingModel(classifier(), factory())
    loss = (
        keras.losses.CategoricalCrossentropy(from_logits=True)
        if one_hot
        else sparse_ce()
    )
    labels = np.eye(CLASSES, dtype="float32")[y] if one_hot else y
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit
    )
    history = model.fit(
        x, labels, batch_size=16, epochs=1, verbose=0, shuffle=False
    )
    expected, lam = hand_loss(model, factory, x, labels, one_hot, jit)
    assert np.ptp(lam) > 0.1  # samples really were mixed differently
    np.testing.assert_allclose(history.history["loss"][0], expected, 1e-4)


def test_evaluate_and_predict_are_unaffected():
    x, y = data(n=16)
    inner = classifier()
    model = MixingModel(inner, MixupLayer(seed=0))
    model.compile(loss=sparse_ce())
    inner.compile(loss=sparse_ce())
    np.testing.assert_allclose(
        model.predict(x, verbose=0), inner.predict(x, verbose=0), 1e-6
    )
    np.testing.assert_allclose(
        model.evaluate(x, y, verbose=0), inner.evaluate(x, y, verbose=0), 1e-6
    )


def test_regularization_losses_count_once():
    x, y = data(n=16)
    inner = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(
                CLASSES, kernel_regularizer=keras.regularizers.L2(10.0)
            ),
        ]
    )
    model = MixingModel(inner, MixupLayer(alpha=1.0, mode="elem", seed=1))
    jit = harness.jit_modes()[-1]
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce(), jit_compile=jit
    )
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    expected, _ = hand_loss(
        model,
        lambda: MixupLayer(alpha=1.0, mode="elem", seed=1),
        x,
        y,
        jit=jit,
    )
    penalty = 10.0 * float(
        np.sum(harness.to_numpy(inner.layers[-1].kernel) ** 2)
    )
    np.testing.assert_allclose(
        history.history["loss"][0], expected + penalty, rtol=1e-4
    )


def test_label_smoothing_applies_to_float_labels():
    x, y = data(n=16)
    labels = np.eye(CLASSES, dtype="float32")[y]
    model = MixingModel(
        classifier(), MixupLayer(label_smoothing=0.3, mode="elem", seed=1)
    )
    jit = harness.jit_modes()[-1]
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    history = model.fit(
        x, labels, batch_size=16, epochs=1, verbose=0, shuffle=False
    )
    mixed, lam, partner = twin_draws(
        lambda: MixupLayer(mode="elem", seed=1), x, jit
    )
    logits = harness.to_numpy(model.model(mixed))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    smooth = labels * 0.7 + 0.1
    lam, partner = harness.to_numpy(lam), harness.to_numpy(partner)
    target = lam[:, None] * smooth + (1 - lam[:, None]) * smooth[partner]
    expected = float(np.mean(-(target * logp).sum(axis=1)))
    np.testing.assert_allclose(history.history["loss"][0], expected, 1e-4)


def test_half_precision_training():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        x, y = data(n=16)
        model = MixingModel(classifier(), RandomMix(mode="elem", seed=0))
        model.compile(
            optimizer="sgd",
            loss=sparse_ce(),
            jit_compile=harness.jit_modes()[-1],
        )
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.config.set_dtype_policy("float32")


def test_save_and_load():
    x, y = data(n=16)
    model = MixingModel(classifier(), CutMixLayer(alpha=0.5, seed=2))
    model.compile(optimizer="adam", loss=sparse_ce())
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wrapper.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert isinstance(loaded, MixingModel)
        assert isinstance(loaded.mixer, CutMixLayer)
        assert loaded.mixer.alpha == 0.5
        np.testing.assert_allclose(
            loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6
        )
        loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)

        inner_path = os.path.join(tmp, "inner.keras")
        model.model.save(inner_path)
        with zipfile.ZipFile(inner_path) as archive:
            config = json.loads(archive.read("config.json"))
        assert "keras_regularize" not in json.dumps(config)
        inner = keras.saving.load_model(inner_path)
        np.testing.assert_allclose(
            inner.predict(x, verbose=0), model.predict(x, verbose=0), 1e-6
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="argument `model`"):
        MixingModel(keras.layers.Dense(2), MixupLayer())
    with pytest.raises(ValueError, match="argument `mixer`"):
        MixingModel(classifier(), keras.layers.Dropout(0.1))


def test_integer_labels_with_smoothing_need_num_classes():
    x, y = data(n=8)
    model = MixingModel(classifier(), MixupLayer(label_smoothing=0.1))
    model.compile(loss=sparse_ce())
    with pytest.raises(ValueError, match="argument `num_classes`"):
        model.fit(x, y, verbose=0)


def label_errors():
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        return (ValueError, tf.errors.InvalidArgumentError)
    return ValueError


def _fit_loss(model, x, y, sample_weight, jit):
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce(), jit_compile=jit
    )
    history = model.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    return history.history["loss"][0]


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_sample_weight_column_gives_the_plain_loss_at_probability_zero(jit):
    x, y = data(n=16)
    w = np.linspace(0.1, 2.0, 16).astype("float32")
    for sample_weight in (w, w[:, None]):
        inner = classifier()
        plain = _fit_loss(inner, x, y, sample_weight, jit)
        model = MixingModel(
            inner, MixupLayer(alpha=1.0, probability=0.0, seed=0)
        )
        mixed = _fit_loss(model, x, y, sample_weight, jit)
        np.testing.assert_allclose(mixed, plain, rtol=1e-5)
    # And mixed: a (B,) and a (B, 1) weight give the same loss.
    losses = []
    for sample_weight in (w, w[:, None]):
        keras.utils.set_random_seed(0)
        model = MixingModel(classifier(), MixupLayer(mode="elem", seed=3))
        model.model.set_weights(inner.get_weights())
        losses.append(_fit_loss(model, x, y, sample_weight, jit))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def _categorical_run(mixer, jit, x, y):
    model = MixingModel(classifier(), mixer)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit,
    )
    history = model.fit(
        x, y, batch_size=8, epochs=1, validation_data=(x, y), verbose=0
    )
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    return model, history.history, logs


def _plain_ce(model, x, targets):
    logits = harness.to_numpy(model.model(x))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(np.mean(-(targets * logp).sum(axis=1)))


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_integer_labels_with_smoothing_fit_evaluate_and_validate(jit):
    x, y = data(n=16)
    e = 0.1
    mixer = MixupLayer(num_classes=CLASSES, label_smoothing=e, seed=0)
    model, history, logs = _categorical_run(mixer, jit, x, y)
    assert np.isfinite(history["loss"][0])
    smooth = np.eye(CLASSES)[y] * (1 - e) + e / CLASSES
    expected = _plain_ce(model, x, smooth)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(history["val_loss"][0], expected, rtol=1e-4)
    # Metrics compare with the unsmoothed classes.
    accuracy = np.mean(harness.to_numpy(model(x)).argmax(axis=1) == y)
    np.testing.assert_allclose(logs["accuracy"], accuracy, atol=1e-6)


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_integer_labels_with_a_categorical_loss_are_one_hot(jit):
    x, y = data(n=16)
    mixer = CutMixLayer(num_classes=CLASSES, mode="elem", seed=0)
    model, history, logs = _categorical_run(mixer, jit, x, y)
    assert np.isfinite(history["loss"][0])
    expected = _plain_ce(model, x, np.eye(CLASSES)[y])
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(history["val_loss"][0], expected, rtol=1e-4)


def test_sparse_loss_with_smoothing_asks_for_a_categorical_loss():
    x, y = data(n=8)
    model = MixingModel(
        classifier(), MixupLayer(num_classes=CLASSES, label_smoothing=0.1)
    )
    model.compile(loss=sparse_ce())
    with pytest.raises(ValueError, match="argument `label_smoothing`.*sparse"):
        model.fit(x, y, verbose=0)


def test_binary_float_targets_are_smoothed_as_two_classes():
    x, _ = data(n=16)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("float32")[:, None]
    inner = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    e = 0.2
    model = MixingModel(inner, MixupLayer(label_smoothing=e, seed=0))
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    loss = model.evaluate(x, y, verbose=0)
    p = 1 / (1 + np.exp(-harness.to_numpy(inner(x))))
    t = y * (1 - e) + e / 2
    expected = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_out_of_range_ids_raise_or_give_a_nan_loss(jit):
    x, y = data(n=8)

    def fresh():
        # A fit stopped by an exception leaves a JAX model's variables
        # purged (Keras's behaviour), so every check gets its own model.
        model = MixingModel(classifier(), MixupLayer(seed=0))
        model.compile(optimizer="sgd", loss=sparse_ce(), jit_compile=jit)
        return model

    for bad in (CLASSES, -1):
        labels = y.copy()
        labels[3] = bad
        if jit is True:
            model = fresh()
            history = model.fit(x, labels, epochs=1, verbose=0)
            assert np.isnan(history.history["loss"][0])
            assert np.isnan(model.evaluate(x, labels, verbose=0))
        else:
            pattern = f"argument `labels`.*Received: labels=(\\] \\[)?{bad}"
            with pytest.raises(label_errors(), match=pattern):
                fresh().fit(x, labels, epochs=1, verbose=0)
            with pytest.raises(label_errors(), match=pattern):
                fresh().evaluate(x, labels, verbose=0)


@pytest.mark.slow
@pytest.mark.skipif(harness.BACKEND != "torch", reason="torch.compile only")
def test_integer_labels_with_smoothing_under_torch_compile():
    # jit_compile=True on torch is torch.compile (about a minute on CPU);
    # the other backends run jit_compile=True in the tests above.
    x, y = data(n=16)
    e = 0.1
    mixer = MixupLayer(num_classes=CLASSES, label_smoothing=e, seed=0)
    model, history, logs = _categorical_run(mixer, True, x, y)
    assert np.isfinite(history["loss"][0])
    smooth = np.eye(CLASSES)[y] * (1 - e) + e / CLASSES
    expected = _plain_ce(model, x, smooth)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(history["val_loss"][0], expected, rtol=1e-4)
