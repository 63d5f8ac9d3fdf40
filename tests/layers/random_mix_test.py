"""Tests for keras_regularize.layers.RandomMix."""

import numpy as np
import pytest

from keras_regularize.layers import RandomMix
from tests import harness
from tests.layers.cut_mix_layer_test import check_exact_boxes
from tests.layers.cut_mix_layer_test import tagged
from tests.layers.mixup_layer_test import one_hot_mix
from tests.layers.mixup_layer_test import recover


def first(outputs):
    return outputs[0]


def test_contract():
    harness.assert_layer_contract(
        RandomMix,
        {"mode": "elem", "data_format": "channels_last"},
        [(6, 5, 3), (4,)],
        select=first,
    )


def test_switch_prob_one_is_cutmix():
    layer = RandomMix(switch_prob=1.0, mode="elem", seed=3)
    check_exact_boxes(layer, (8, 8), "channels_last")


def test_switch_prob_zero_is_mixup():
    x = np.random.default_rng(0).normal(size=(48, 8, 8, 2))
    x = x.astype("float32")
    layer = RandomMix(mixup_alpha=1.0, switch_prob=0.0, mode="elem", seed=3)
    mixed, labels = one_hot_mix(layer, x)
    lam, partner = recover(labels)
    w = lam[:, None, None, None]
    np.testing.assert_allclose(
        mixed, w * x + (1 - w) * x[partner], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_each_sample_is_cut_or_blended_consistently(mode):
    batch = 48
    x = tagged(batch, (8, 8), "channels_last")
    layer = RandomMix(num_classes=batch, mode=mode, seed=9)
    mixed, labels = layer((x, np.arange(batch)))
    mixed = harness.to_numpy(mixed)[..., 0]
    labels = harness.to_numpy(labels)
    lam, partner = recover(labels)
    own = np.arange(1, batch + 1)[:, None, None]
    cut = blend = 0
    for b in range(batch):
        if partner[b] == b or lam[b] == 1.0:
            assert np.all(mixed[b] == own[b])
            continue
        values = np.unique(mixed[b])
        if set(values) <= {b + 1, partner[b] + 1}:
            cut += 1
            fraction = np.mean(mixed[b] == partner[b] + 1)
            np.testing.assert_allclose(lam[b], 1 - fraction, atol=1e-6)
        else:
            blend += 1
            expected = lam[b] * (b + 1) + (1 - lam[b]) * (partner[b] + 1)
            np.testing.assert_allclose(mixed[b], expected, rtol=1e-5)
    assert cut > 5 and blend > 5, (cut, blend)


def test_batch_mode_picks_one_method_per_batch():
    x = tagged(48, (8, 8), "channels_last")
    layer = RandomMix(num_classes=48, seed=1)
    kinds = set()
    for _ in range(12):
        mixed, _ = layer((x, np.arange(48)))
        mixed = harness.to_numpy(mixed)[..., 0]
        integral = np.all(mixed == np.round(mixed))
        kinds.add("cut" if integral else "blend")
    assert kinds == {"cut", "blend"}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_odd_batches(batch, mode):
    x = tagged(batch, (8, 8), "channels_last")
    mixed, labels = RandomMix(num_classes=batch, mode=mode, seed=2)(
        (x, np.arange(batch))
    )
    assert tuple(mixed.shape) == x.shape
    np.testing.assert_allclose(
        harness.to_numpy(labels).sum(axis=1), 1.0, atol=1e-6
    )


def test_hyperparameters_are_variables():
    layer = RandomMix(switch_prob=0.2)
    layer.switch_prob = 1.0
    layer.mixup_alpha = 0.3
    layer.cutmix_alpha = 0.5
    assert harness.to_numpy(layer.switch_prob_variable) == 1.0
    config = layer.get_config()
    assert config["switch_prob"] == 1.0 and config["mixup_alpha"] == 0.3
    assert len(layer.non_trainable_weights) == 4


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"mixup_alpha": 0}, "argument `mixup_alpha`"),
        ({"cutmix_alpha": -2.0}, "argument `cutmix_alpha`"),
        ({"switch_prob": 1.1}, "argument `switch_prob`.*\\[0, 1\\]"),
        ({"switch_prob": -0.5}, "argument `switch_prob`"),
        ({"probability": 3}, "argument `probability`"),
        ({"label_smoothing": -0.1}, "argument `label_smoothing`"),
        ({"minmax": (0.9, 0.1)}, "argument `minmax`"),
        ({"mode": "all"}, "argument `mode`"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        RandomMix(**kwargs)


def test_images_alone_raise():
    with pytest.raises(ValueError, match="RandomMix.*needs both"):
        RandomMix()(np.ones((2, 4, 4, 1), "float32"))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"data_format": ""}, "data_format"),
        ({"correct_lam": "no"}, "correct_lam"),
        ({"correct_lam": 0}, "correct_lam"),
        ({"mixup_alpha": float("inf")}, "mixup_alpha"),
        ({"cutmix_alpha": float("inf")}, "cutmix_alpha"),
        ({"switch_prob": float("nan")}, "switch_prob"),
    ],
)
def test_flags_and_non_finite_values_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=f"argument `{name}`"):
        RandomMix(**kwargs)


def test_setters_refuse_non_finite_values():
    layer = RandomMix()
    for attr in ("mixup_alpha", "cutmix_alpha", "switch_prob", "probability"):
        before = getattr(layer, attr)
        for value in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(ValueError, match=f"argument `{attr}`"):
                setattr(layer, attr, value)
        assert getattr(layer, attr) == before


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_empty_batch_in_empty_out(mode):
    images, labels = RandomMix(num_classes=3, mode=mode, seed=0)(
        (np.zeros((0, 5, 5, 2), "float32"), np.zeros((0,), "int32"))
    )
    assert tuple(images.shape) == (0, 5, 5, 2)
    assert tuple(labels.shape) == (0, 3)


def test_out_of_range_ids_are_refused():
    x = tagged(4, (4, 4), "channels_last")
    with pytest.raises(ValueError, match="Received: labels=7"):
        RandomMix(num_classes=4)((x, np.array([0, 1, 7, 2])))
