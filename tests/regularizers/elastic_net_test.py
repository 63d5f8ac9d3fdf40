"""Tests for keras_regularize.regularizers.ElasticNet."""

import os

import keras
import numpy as np
import pytest

from keras_regularize.regularizers import ElasticNet
from tests.harness import to_numpy


@pytest.mark.parametrize("l1_ratio", [0.0, 0.3, 0.5, 1.0])
def test_equals_keras_l1l2_with_matching_factors(l1_ratio):
    w = np.random.default_rng(0).normal(size=(7, 5)).astype("float32")
    strength = 1e-2
    ours = to_numpy(ElasticNet(strength, l1_ratio)(w))
    theirs = to_numpy(
        keras.regularizers.L1L2(
            l1=strength * l1_ratio, l2=strength * (1 - l1_ratio)
        )(w)
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    expected = strength * (
        l1_ratio * np.abs(w).sum() + (1 - l1_ratio) * (w**2).sum()
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_zero_strength_is_zero():
    w = np.ones((3, 3), "float32")
    assert float(to_numpy(ElasticNet(0.0)(w))) == 0.0


def test_in_a_model_and_keras_file_round_trip(tmp_path):
    def build(reg):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3, kernel_regularizer=reg)]
        )
        model.compile(optimizer="sgd", loss="mse")
        return model

    model = build(ElasticNet(0.1, 0.25))
    reference = build(keras.regularizers.L1L2(l1=0.025, l2=0.075))
    np.testing.assert_allclose(
        to_numpy(model.losses[0]), to_numpy(reference.losses[0]), rtol=1e-6
    )
    x = np.ones((4, 4), "float32")
    model.fit(x, np.zeros((4, 3)), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    reg = loaded.layers[0].kernel_regularizer
    assert type(reg) is ElasticNet
    assert reg.get_config() == {"strength": 0.1, "l1_ratio": 0.25}
    np.testing.assert_allclose(
        to_numpy(loaded.losses[0]), to_numpy(model.losses[0]), rtol=1e-6
    )


def test_config_round_trip():
    reg = ElasticNet(3e-4, 0.75)
    again = keras.regularizers.get(keras.regularizers.serialize(reg))
    assert type(again) is ElasticNet and again.get_config() == reg.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": -1e-3}, "argument `strength`.*strength=-0.001"),
        ({"l1_ratio": 1.5}, r"argument `l1_ratio`.*\[0, 1\].*l1_ratio=1.5"),
        ({"l1_ratio": -0.1}, "argument `l1_ratio`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ElasticNet(**kwargs)
