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


INF = float("inf")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": -1e-3}, "argument `strength`.*strength=-0.001"),
        ({"l1_ratio": 1.5}, r"argument `l1_ratio`.*\[0, 1\].*l1_ratio=1.5"),
        ({"l1_ratio": -0.1}, "argument `l1_ratio`"),
        ({"strength": INF}, "`strength`. Expected a finite number >= 0.*=inf"),
        ({"strength": -INF}, "argument `strength`.*strength=-inf"),
        ({"strength": float("nan")}, "argument `strength`.*strength=nan"),
        ({"strength": True}, "argument `strength`.*strength=True"),
        ({"strength": "0.1"}, "argument `strength`.*strength='0.1'"),
        ({"strength": None}, "argument `strength`.*strength=None"),
        ({"strength": [0.1]}, "argument `strength`"),
        ({"l1_ratio": INF}, "argument `l1_ratio`.*l1_ratio=inf"),
        ({"l1_ratio": float("nan")}, "argument `l1_ratio`.*l1_ratio=nan"),
        ({"l1_ratio": False}, "argument `l1_ratio`.*l1_ratio=False"),
        ({"l1_ratio": None}, "argument `l1_ratio`.*l1_ratio=None"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        ElasticNet(**kwargs)
    expected = str(info.value).split("Received")[0]
    assert "inf]" not in expected and "inf)" not in expected


def test_penalty_is_finite_for_every_accepted_strength():
    w = np.random.default_rng(0).normal(size=(4, 4)).astype("float32")
    for strength in (0.0, 1e-8, 1.0, 1e6):
        assert np.isfinite(float(to_numpy(ElasticNet(strength)(w))))


def test_zero_weights_give_zero_and_sign_does_not_matter():
    zeros = np.zeros((4, 4), "float32")
    assert float(to_numpy(ElasticNet(0.1, 0.5)(zeros))) == 0.0
    w = np.random.default_rng(1).random((4, 4)).astype("float32")
    reg = ElasticNet(0.1, 0.3)
    np.testing.assert_allclose(to_numpy(reg(w)), to_numpy(reg(-w)))


def test_pure_l1_and_pure_l2_equal_keras_l1_and_l2():
    w = np.random.default_rng(2).random((4, 4)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(ElasticNet(0.1, 1.0)(w)),
        to_numpy(keras.regularizers.L1(0.1)(w)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(ElasticNet(0.1, 0.0)(w)),
        to_numpy(keras.regularizers.L2(0.1)(w)),
        rtol=1e-6,
    )


def test_l2_share_dominates_for_large_weights_l1_for_small():
    large = np.full((4, 4), 10.0, "float32")
    small = np.full((4, 4), 0.1, "float32")
    l1, l2 = ElasticNet(1.0, 1.0), ElasticNet(1.0, 0.0)
    assert float(to_numpy(l2(large))) > float(to_numpy(l1(large)))
    assert float(to_numpy(l2(small))) < float(to_numpy(l1(small)))


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_integer_weights_raise_instead_of_a_truncated_penalty(dtype):
    w = keras.ops.cast(np.ones((3, 3)), dtype)
    with pytest.raises(ValueError, match="ElasticNet.*floating-point"):
        ElasticNet(0.5)(w)
