"""Tests for keras_regularize.layers.MixupLayer and the shared mixing code."""

import keras
import numpy as np
import pytest
from scipy import special
from scipy import stats

from keras_regularize.layers import MixupLayer
from keras_regularize.layers import _mixing_math
from keras_regularize.layers import _mixing_ops
from tests import harness

# tf.data tests run twice: through Keras's own ops under the tensorflow
# backend, and through the TensorFlow operation set under jax or torch
# (marked `tf_data`: TensorFlow must be installed beside that backend).
TF_DATA = pytest.mark.parametrize(
    "pipeline",
    [
        pytest.param(
            "tensorflow",
            marks=pytest.mark.skipif(
                harness.BACKEND != "tensorflow", reason="tensorflow backend"
            ),
        ),
        pytest.param(
            "foreign",
            marks=[
                pytest.mark.tf_data,
                pytest.mark.skipif(
                    harness.BACKEND == "tensorflow", reason="jax/torch backend"
                ),
            ],
        ),
    ],
)


def first(outputs):
    return outputs[0]


def one_hot_mix(layer, x, batch=None):
    """Mixes `x` with labels `arange(B)`, so lam and partner are readable."""
    batch = batch or x.shape[0]
    layer.num_classes = batch
    mixed, labels = layer((x, np.arange(batch)))
    return harness.to_numpy(mixed), harness.to_numpy(labels)


def recover(labels):
    """Own weight and partner of each sample from one-hot-id mixed labels."""
    lam = np.diag(labels).copy()
    others = labels.copy()
    np.fill_diagonal(others, -1.0)
    partner = np.where(lam < 1.0, others.argmax(axis=1), np.arange(len(lam)))
    return lam, partner


def test_contract():
    harness.assert_layer_contract(
        MixupLayer,
        {"alpha": 0.4, "mode": "elem"},
        [(6, 6, 3), (5,)],
        select=first,
    )


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_lambda_follows_beta(alpha):
    layer = MixupLayer(alpha=alpha, mode="elem", seed=11)
    _, lam, _ = layer.mix_images(np.zeros((5000, 1), "float32"))
    lam = harness.to_numpy(lam).astype("float64")
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.01


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_gamma_sampler_is_exact_on_many_draws(alpha):
    # float32 lambdas cannot resolve Beta(0.2, 0.2)'s tails at 1e5 draws, so
    # test the log-gamma draws and the logit of lambda in float64 instead.
    xp = _mixing_ops.KerasOps(keras.random.SeedGenerator(3))
    alpha_t = keras.ops.convert_to_tensor(alpha, "float32")
    g = harness.to_numpy(_mixing_math.log_gamma(xp, alpha_t, (2, 50000)))
    g = g.astype("float64")
    gamma_p = stats.kstest(np.exp(g[0]), stats.gamma(alpha).cdf).pvalue
    beta_cdf = stats.beta(alpha, alpha).cdf
    logit_p = stats.kstest(
        g[0] - g[1], lambda t: beta_cdf(special.expit(t))
    ).pvalue
    assert gamma_p > 0.01 and logit_p > 0.01


def test_lambda_follows_beta_inside_a_compiled_step():
    # XLA on TensorFlow (where keras.layers.MixUp's gamma op has no kernel)
    # and jax.jit; torch runs this eagerly.
    alpha = 0.2
    layer = MixupLayer(alpha=alpha, mode="elem", seed=5)

    class Draw(keras.layers.Layer):
        def __init__(self, mixer):
            super().__init__()
            self.mixer = mixer  # tracked, so its seed state is carried

        def call(self, x):
            return self.mixer.mix_images(x)[1]

    inputs = keras.Input((1,))
    model = keras.Model(inputs, Draw(layer)(inputs))
    model.compile(jit_compile=harness.jit_modes()[-1])
    x = np.zeros((5000, 1), "float32")
    lam = model.predict(x, batch_size=5000, verbose=0).astype("float64")
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    lam2 = model.predict(x, batch_size=5000, verbose=0)
    assert not np.array_equal(lam, lam2), "the seed state did not advance"


@pytest.mark.skipif(harness.BACKEND != "tensorflow", reason="TF XLA only")
def test_beta_draws_compile_under_tf_xla():
    import tensorflow as tf

    layer = MixupLayer(alpha=0.2, mode="elem", seed=2)
    x = tf.zeros((5000, 1))

    @tf.function(jit_compile=True)
    def step(images):
        return layer.mix_images(images)

    mixed, lam, partner = step(x)
    lam = lam.numpy().astype("float64")
    assert stats.kstest(lam, stats.beta(0.2, 0.2).cdf).pvalue > 0.01
    assert sorted(partner.numpy().tolist()) == list(range(5000))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_images_are_mixed_with_the_labels_lambda_and_partner(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(33, 4, 4, 2)).astype("float32")
    mixed, labels = one_hot_mix(MixupLayer(1.0, mode=mode, seed=4), x)
    lam, partner = recover(labels)
    expected = (
        lam[:, None, None, None] * x
        + (1 - lam[:, None, None, None]) * x[partner]
    )
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-5)
    assert np.allclose(labels.sum(axis=1), 1.0)
    assert np.any(lam < 0.999)
    if mode == "batch":
        assert np.ptp(lam[partner != np.arange(33)]) < 1e-6
    if mode == "pair":
        np.testing.assert_array_equal(partner[partner], np.arange(33))
        np.testing.assert_allclose(lam, lam[partner], atol=1e-6)
    if mode == "elem":
        assert np.ptp(lam) > 0.1


def test_label_smoothing_sums_to_one_with_floor():
    smoothing, classes = 0.1, 7
    layer = MixupLayer(
        num_classes=classes, label_smoothing=smoothing, mode="elem", seed=0
    )
    x = np.ones((16, 3, 3, 1), "float32")
    ids = np.arange(16) % classes
    for training in (True, False):
        _, y = layer((x, ids), training=training)
        y = harness.to_numpy(y)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(y.min(), smoothing / classes, atol=1e-7)
    # Float targets are smoothed over their own number of columns.
    soft = np.eye(classes, dtype="float32")[ids]
    _, y = MixupLayer(label_smoothing=smoothing, seed=0)((x, soft))
    np.testing.assert_allclose(harness.to_numpy(y).sum(axis=1), 1.0, 1e-6)


def test_inference_keeps_images_and_converts_labels():
    x = np.random.default_rng(1).normal(size=(5, 4, 4, 3)).astype("float32")
    layer = MixupLayer(num_classes=4, seed=0)
    ids = np.array([[0], [1], [2], [3], [1]])
    images, labels = layer((x, ids), training=False)
    np.testing.assert_array_equal(harness.to_numpy(images), x)
    np.testing.assert_array_equal(
        harness.to_numpy(labels), np.eye(4)[[0, 1, 2, 3, 1]]
    )
    assert keras.backend.standardize_dtype(labels.dtype) == "float32"


def test_structures_round_trip():
    x = np.ones((4, 3, 3, 1), "float32")
    ids = np.arange(4)
    layer = MixupLayer(num_classes=4, seed=0)
    assert isinstance(layer((x, ids)), tuple)
    assert isinstance(layer([x, ids]), list)
    assert isinstance(layer(x, ids), tuple)
    out = layer({"images": x, "labels": ids, "ids": ids})
    assert set(out) == {"images", "labels", "ids"}
    assert tuple(out["labels"].shape) == (4, 4)
    np.testing.assert_array_equal(harness.to_numpy(out["ids"]), ids)


def test_images_alone_raise_with_a_pointer_to_mixing_model():
    with pytest.raises(ValueError, match="needs both.*MixingModel"):
        MixupLayer()(np.ones((2, 3, 3, 1), "float32"))
    with pytest.raises(ValueError, match="needs both"):
        MixupLayer()({"images": np.ones((2, 3, 3, 1), "float32")})


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"alpha": 0.0}, "argument `alpha`.*Received: alpha=0.0"),
        ({"alpha": -1}, "argument `alpha`"),
        ({"probability": 1.5}, "argument `probability`.*\\[0, 1\\]"),
        ({"probability": -0.1}, "argument `probability`"),
        ({"label_smoothing": 1.0}, "argument `label_smoothing`"),
        ({"mode": "row"}, "argument `mode`.*'batch', 'pair', 'elem'"),
        ({"num_classes": 0}, "argument `num_classes`"),
        ({"seed": -1}, "argument `seed`"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MixupLayer(**kwargs)


def test_bad_labels():
    x = np.ones((4, 3, 3, 1), "float32")
    with pytest.raises(ValueError, match="argument `num_classes`.*integer"):
        MixupLayer()((x, np.arange(4)))
    with pytest.raises(ValueError, match="argument `labels`.*batch size"):
        MixupLayer(num_classes=4)((x, np.arange(3)))
    with pytest.raises(ValueError, match="argument `labels`"):
        MixupLayer(num_classes=5)((x, np.eye(4, dtype="float32")))


def test_alpha_and_probability_are_variables():
    layer = MixupLayer(alpha=0.3, probability=0.5)
    layer.alpha = 0.7
    layer.probability = 0.0
    assert harness.to_numpy(layer.alpha_variable) == np.float32(0.7)
    assert layer.get_config()["probability"] == 0.0
    assert len(layer.non_trainable_weights) == 2
    with pytest.raises(ValueError, match="argument `alpha`"):
        layer.alpha = 0.0
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    mixed, y = layer((x, np.eye(8, dtype="float32")))
    np.testing.assert_array_equal(harness.to_numpy(mixed), x)
    np.testing.assert_array_equal(harness.to_numpy(y), np.eye(8))


def test_probability_mixes_that_share_of_samples():
    n = 2000
    layer = MixupLayer(alpha=1.0, mode="elem", probability=0.3, seed=3)
    _, lam, partner = layer.mix_images(np.zeros((n, 1), "float32"))
    lam, partner = harness.to_numpy(lam), harness.to_numpy(partner)
    assert harness.binomial_ok(int((lam < 1.0).sum()), n, 0.3)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("batch", [1, 3])
def test_odd_batches_and_a_batch_of_one(mode, batch):
    x = np.random.default_rng(2).normal(size=(batch, 4)).astype("float32")
    mixed, labels = one_hot_mix(MixupLayer(mode=mode, seed=1), x)
    lam, partner = recover(labels)
    np.testing.assert_allclose(
        mixed, lam[:, None] * x + (1 - lam[:, None]) * x[partner], atol=1e-5
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_half_precision_images_and_float32_labels(policy):
    layer = MixupLayer(alpha=1.0, num_classes=6, mode="elem", dtype=policy)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    mixed, labels = layer((x, np.arange(6)))
    assert keras.backend.standardize_dtype(mixed.dtype) == policy[6:]
    assert keras.backend.standardize_dtype(labels.dtype) == "float32"
    lam, partner = recover(harness.to_numpy(labels))
    # The labels carry exactly the weight the half-precision images got.
    x_half = harness.to_numpy(keras.ops.cast(x, policy[6:])).astype("float32")
    expected = lam[:, None] * x_half + (1 - lam[:, None]) * x_half[partner]
    got = harness.to_numpy(keras.ops.cast(mixed, "float32"))
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2)


def test_same_mixing_in_a_jit_compiled_model():
    # The layer inside a compiled predict step: inputs (images, labels).
    images, labels = keras.Input((4,)), keras.Input((3,))
    layer = MixupLayer(alpha=1.0, seed=0)
    mixed, targets = layer((images, labels), training=True)
    model = keras.Model([images, labels], [mixed, targets])
    model.compile(jit_compile=harness.jit_modes()[-1])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.eye(8, 3, dtype="float32")
    got_x, got_y = model.predict([x, y], verbose=0)
    assert got_x.shape == (8, 4) and got_y.shape == (8, 3)
    assert np.allclose(got_y.sum(axis=1), y.sum(axis=1), atol=1e-5)


def tf_data_pipeline(layer, x, y, as_dict=False):
    import tensorflow as tf

    data = {"images": x, "labels": y} if as_dict else (x, y)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4).map(layer)
    return list(dataset.as_numpy_iterator())


@TF_DATA
def test_tf_data_map(pipeline):
    pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).normal(size=(12, 5, 5, 2)).astype("float32")
    ids = np.arange(12) % 4
    for layer in (
        MixupLayer(alpha=1.0, num_classes=4, mode="elem", seed=0),
        MixupLayer(alpha=1.0, num_classes=4, mode="pair", seed=0),
    ):
        batches = tf_data_pipeline(layer, x, ids)
        assert len(batches) == 3
        for k, (images, labels) in enumerate(batches):
            assert images.shape == (4, 5, 5, 2) and labels.shape == (4, 4)
            np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
            xb = x[4 * k : 4 * k + 4]
            # Each mixed image is a convex combination of two batch members.
            assert not np.allclose(images, xb)
        out = tf_data_pipeline(layer, x, ids, as_dict=True)
        assert set(out[0]) == {"images", "labels"}


def label_errors():
    """Errors a bad label value may raise: TensorFlow graphs raise their own.

    Eager calls raise `ValueError`; a TensorFlow graph (`tf.function`,
    `tf.data`) can only raise `InvalidArgumentError`, with the same message.
    """
    if harness.BACKEND == "tensorflow":
        import tensorflow as tf

        return (ValueError, tf.errors.InvalidArgumentError)
    return ValueError


def received(value):
    """The message tail naming a bad label; graphs print `=] [5]`."""
    return f"Received: labels=(\\] \\[)?{value}"


@pytest.mark.parametrize("batch", [4, 8])
@pytest.mark.parametrize("column", [False, True])
def test_float_binary_targets_are_smoothed_as_two_classes(batch, column):
    e = 0.2
    y = (np.arange(batch) % 2).astype("float32")
    y = y[:, None] if column else y
    x = np.ones((batch, 3), "float32")
    layer = MixupLayer(label_smoothing=e, seed=0)
    _, got = layer((x, y), training=False)
    got = harness.to_numpy(got)
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y * (1 - e) + e / 2, atol=1e-7)
    # Mixing keeps the smoothed values inside [e/2, 1 - e/2].
    _, mixed = layer((x, y))
    mixed = harness.to_numpy(mixed)
    assert mixed.shape == y.shape
    assert mixed.min() >= e / 2 - 1e-6 and mixed.max() <= 1 - e / 2 + 1e-6


def test_multi_hot_targets_are_smoothed_column_by_column():
    # The rule: every column of a (batch, classes) float target gets
    # y * (1 - e) + e / classes, so a row with m ones sums to m(1 - e) + e.
    e, classes = 0.3, 4
    y = np.array(
        [[1, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], "float32"
    )
    x = np.ones((4, 2), "float32")
    _, got = MixupLayer(label_smoothing=e)((x, y), training=False)
    got = harness.to_numpy(got)
    np.testing.assert_allclose(got, y * (1 - e) + e / classes, atol=1e-7)
    np.testing.assert_allclose(
        got.sum(axis=1), y.sum(axis=1) * (1 - e) + e, atol=1e-6
    )


@pytest.mark.parametrize("bad", [5, -1, 3])
def test_out_of_range_class_ids_raise_naming_the_value(bad):
    x = np.ones((4, 3, 3, 1), "float32")
    ids = np.array([0, bad, 1, 2])
    pattern = f"argument `labels`.*\\[0, 3\\).*Received: labels={bad}"
    for training in (True, False):
        with pytest.raises(ValueError, match=pattern):
            MixupLayer(num_classes=3, seed=0)((x, ids), training=training)
    with pytest.raises(ValueError, match=pattern):
        MixupLayer(num_classes=3).prepare_labels(ids)


def test_float_binary_targets_outside_unit_interval_raise():
    x = np.ones((4, 2), "float32")
    for bad in (1.997, -0.5, float("nan")):
        y = np.array([0.0, 1.0, bad, 0.5], "float32")
        with pytest.raises(ValueError, match="argument `labels`.*\\[0, 1\\]"):
            MixupLayer()((x, y))


def test_float_class_ids_with_num_classes_are_refused():
    x = np.ones((4, 2), "float32")
    for y in (np.array([0.0, 1.0, 2.0, 1.0]), np.array([[0.0], [2.0]] * 2)):
        with pytest.raises(ValueError, match="argument `labels`.*integer"):
            MixupLayer(num_classes=3)((x, y.astype("float32")))
    # Binary float targets with num_classes=2 stay binary targets.
    y = np.array([0.0, 1.0, 1.0, 0.0], "float32")
    _, got = MixupLayer(num_classes=2)((x, y), training=False)
    np.testing.assert_array_equal(harness.to_numpy(got), y)


def _label_model(jit, num_classes=3):
    images = keras.Input((2,))
    ids = keras.Input((), dtype="int32")
    _, targets = MixupLayer(num_classes=num_classes, seed=0)((images, ids))
    model = keras.Model([images, ids], targets)
    model.compile(jit_compile=jit)
    return model


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_out_of_range_ids_in_a_model_raise_or_give_nan(jit):
    x = np.ones((4, 2), "float32")
    model = _label_model(jit)
    good = model.predict([x, np.array([0, 1, 2, 0])], verbose=0)
    assert np.isfinite(good).all()
    bad = np.array([0, 5, 1, -1], "int32")
    if jit is True:
        # A compiled step cannot raise on data: the rows become NaN.
        out = model.predict([x, bad], verbose=0)
        assert np.isnan(out).any()
        assert not np.isfinite(out).all()
    else:
        with pytest.raises(label_errors(), match=received(5)):
            model.predict([x, bad], verbose=0)


def test_infinite_hyperparameters_are_refused_by_constructor_and_setter():
    inf = float("inf")
    for kwargs in ({"alpha": inf}, {"probability": inf}, {"alpha": -inf}):
        with pytest.raises(ValueError, match="finite|Received"):
            MixupLayer(**kwargs)
    layer = MixupLayer(alpha=0.4)
    for value in (inf, float("nan")):
        with pytest.raises(ValueError, match="argument `alpha`"):
            layer.alpha = value
        with pytest.raises(ValueError, match="argument `probability`"):
            layer.probability = value
    assert layer.alpha == 0.4
    assert harness.to_numpy(layer.alpha_variable) == np.float32(0.4)


def test_integer_images_are_cast_to_float_without_rescaling():
    # uint8 pipelines are common: images are cast to the compute dtype with
    # their values kept (no division by 255), so mixing stays exact.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 4, 4, 3)).astype("uint8")
    layer = MixupLayer(alpha=1.0, num_classes=6, mode="elem", seed=0)
    images, _ = layer((x, np.arange(6)), training=False)
    assert keras.backend.standardize_dtype(images.dtype) == "float32"
    np.testing.assert_array_equal(harness.to_numpy(images), x)
    mixed, labels = one_hot_mix(layer, x)
    lam, partner = recover(labels)
    xf = x.astype("float32")
    w = lam[:, None, None, None]
    np.testing.assert_allclose(
        mixed, w * xf + (1 - w) * xf[partner], rtol=1e-5, atol=1e-3
    )


def test_labels_of_wrong_shape_are_refused():
    x = np.ones((4, 3, 3, 1), "float32")
    layer = MixupLayer(num_classes=3)
    with pytest.raises(ValueError, match="argument `labels`.*rank >= 1"):
        layer((x, np.array(1)))
    with pytest.raises(ValueError, match="argument `labels`.*\\(batch, 1\\)"):
        layer((x, np.zeros((4, 2), "int32")))
    with pytest.raises(ValueError, match="argument `labels`.*batch size"):
        layer((x, np.zeros((5,), "int32")))
    with pytest.raises(ValueError, match="argument `labels`.*3 columns"):
        layer((x, np.zeros((4, 4), "float32")))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_empty_batch_in_empty_out(mode):
    layer = MixupLayer(num_classes=3, mode=mode, seed=0)
    images, labels = layer(
        (np.zeros((0, 4, 4, 1), "float32"), np.zeros((0,), "int32"))
    )
    assert tuple(images.shape) == (0, 4, 4, 1)
    assert tuple(labels.shape) == (0, 3)


def test_symbolic_batch_of_unknown_size():
    images = keras.Input((4, 4, 1))
    layer = MixupLayer(num_classes=3, label_smoothing=0.1)
    mixed, targets = layer((images, keras.Input((), dtype="int32")))
    assert tuple(mixed.shape) == (None, 4, 4, 1)
    assert tuple(targets.shape) == (None, 3)
    _, binary = MixupLayer()((images, keras.Input((1,))))
    assert tuple(binary.shape) == (None, 1)
    with pytest.raises(ValueError, match="argument `labels`"):
        MixupLayer(num_classes=3)((images, keras.Input(())))


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_every_mixed_row_has_exactly_two_classes(mode):
    # torchvision's check: unique labels, every row has two non-zero
    # entries summing to one (no sample is left paired with itself).
    batch, classes = 32, 100
    x = np.random.default_rng(0).random((batch, 3, 10, 10)).astype("float32")
    layer = MixupLayer(alpha=1.0, num_classes=classes, mode=mode, seed=0)
    images, labels = layer((x, np.arange(batch)))
    labels = harness.to_numpy(labels)
    assert tuple(images.shape) == x.shape and labels.shape == (batch, classes)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal((labels != 0).sum(axis=1), 2)


@TF_DATA
def test_tf_data_refuses_out_of_range_ids(pipeline):
    tf = pytest.importorskip("tensorflow")
    x = np.ones((8, 3, 3, 1), "float32")
    layer = MixupLayer(num_classes=3, seed=0)
    cases = ((np.array([0, 1, 2, 5] * 2), 5), (-np.ones(8, "int64"), -1))
    for ids, bad in cases:
        dataset = tf.data.Dataset.from_tensor_slices((x, ids)).batch(4)
        with pytest.raises(tf.errors.InvalidArgumentError, match=received(bad)):
            list(dataset.map(layer).as_numpy_iterator())
    floats = np.array([0.0, 1.0, 1.5, 0.0] * 2, "float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, floats)).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="\\[0, 1\\]"):
        list(dataset.map(MixupLayer()).as_numpy_iterator())
