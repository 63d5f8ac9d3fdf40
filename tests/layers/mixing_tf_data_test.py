"""Mixing layers in real `tf.data` pipelines, hyperparameter changes included.

Under the tensorflow backend the layers run Keras's ops in the pipeline's
graph; under jax or torch (marked `tf_data`, with TensorFlow installed
beside the backend) they run the TensorFlow operation set. Either way a
value a callback sets between batches must reach the next batch.
"""

import numpy as np
import pytest

from keras_regularize.layers import CutMixLayer
from keras_regularize.layers import MixupLayer
from keras_regularize.layers import RandomMix
from tests.layers.cut_mix_layer_test import tagged
from tests.layers.mixup_layer_test import TF_DATA

tf = pytest.importorskip("tensorflow")

BATCH = 32


def mapped_batches(layer, x, y):
    """Endless batches of `(x, y)` mapped by `layer`, made on demand.

    tf.data may add a prefetch after the map (`inject_prefetch`); without
    it, every batch is made when asked for, after any change before it.
    """
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    dataset = dataset.batch(len(x)).map(layer).with_options(options)
    return dataset.as_numpy_iterator()


def own_weights(labels):
    """The weight of each sample's own label (labels are ids `arange(B)`)."""
    return np.diag(labels)


@TF_DATA
def test_mixup_probability_and_alpha_reach_the_running_pipeline(pipeline):
    del pipeline  # which path: see TF_DATA
    x = np.random.default_rng(0).normal(size=(BATCH, 4)).astype("float32")
    layer = MixupLayer(alpha=1.0, num_classes=BATCH, mode="elem", seed=0)
    batches = mapped_batches(layer, x, np.arange(BATCH))
    images, labels = next(batches)
    assert np.all(own_weights(labels) < 1.0)
    layer.probability = 0.0
    for _ in range(2):
        images, labels = next(batches)
        np.testing.assert_array_equal(images, x)
        np.testing.assert_array_equal(labels, np.eye(BATCH))
    layer.probability = 1.0
    layer.alpha = 0.02  # lambda near 0 or 1
    lam = own_weights(next(batches)[1])
    assert np.mean(np.abs(lam - 0.5) > 0.45) > 0.8, lam
    layer.alpha = 200.0  # lambda near 1/2
    lam = own_weights(next(batches)[1])
    assert np.all(np.abs(lam - 0.5) < 0.15), lam


@TF_DATA
def test_cutmix_probability_and_alpha_reach_the_running_pipeline(pipeline):
    del pipeline  # which path: see TF_DATA
    x = tagged(BATCH, (8, 8), "channels_last")
    layer = CutMixLayer(
        alpha=1.0, num_classes=BATCH, mode="elem", probability=0.0, seed=1
    )
    batches = mapped_batches(layer, x, np.arange(BATCH))
    images, labels = next(batches)
    np.testing.assert_array_equal(images, x)
    layer.probability = 1.0
    layer.alpha = 200.0  # boxes of about half the area
    images, labels = next(batches)
    pasted = (images != x)[..., 0].reshape(BATCH, -1).mean(axis=1)
    np.testing.assert_allclose(own_weights(labels), 1.0 - pasted, atol=1e-6)
    assert 0.25 < pasted.mean() < 0.75, pasted


@TF_DATA
def test_random_mix_switch_prob_reaches_the_running_pipeline(pipeline):
    del pipeline  # which path: see TF_DATA
    x = tagged(BATCH, (8, 8), "channels_last")
    layer = RandomMix(num_classes=BATCH, mode="elem", switch_prob=0.0, seed=2)
    batches = mapped_batches(layer, x, np.arange(BATCH))
    images, _ = next(batches)
    assert not np.all(images == np.round(images))  # blended: fractions
    layer.switch_prob = 1.0
    for _ in range(2):
        images, _ = next(batches)
        np.testing.assert_array_equal(images, np.round(images))  # pasted
    layer.mixup_alpha = 0.5
    layer.cutmix_alpha = 0.5
    layer.probability = 0.0
    images, labels = next(batches)
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, np.eye(BATCH))


@TF_DATA
def test_a_seeded_layer_mixes_a_pipeline_reproducibly(pipeline):
    del pipeline  # which path: see TF_DATA
    x = np.random.default_rng(1).normal(size=(BATCH, 4)).astype("float32")
    runs = []
    for _ in range(2):
        layer = MixupLayer(num_classes=BATCH, mode="elem", seed=7)
        batches = mapped_batches(layer, x, np.arange(BATCH))
        runs.append([next(batches)[1] for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[0][1])
