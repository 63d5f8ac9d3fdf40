"""Tests for keras_regularize.layers.CutMixLayer."""

import keras
import numpy as np
import pytest
from scipy import stats

from keras_regularize.layers import CutMixLayer
from tests import harness
from tests.layers.mixup_layer_test import TF_DATA


def first(outputs):
    return outputs[0]


def tagged(batch, spatial, data_format, channels=2):
    """Inputs whose every element holds its sample's index + 1."""
    if data_format == "channels_last":
        shape = (batch,) + spatial + (channels,)
    else:
        shape = (batch, channels) + spatial
    values = np.arange(1, batch + 1, dtype="float32")
    return values.reshape((-1,) + (1,) * len(spatial) + (1,)) * np.ones(
        shape, "float32"
    )


def check_exact_boxes(layer, spatial, data_format, batch=48):
    """Label weight == pasted fraction, per sample; the paste is one box."""
    x = tagged(batch, spatial, data_format)
    layer.num_classes = batch
    mixed, labels = layer((x, np.arange(batch)))
    mixed, labels = harness.to_numpy(mixed), harness.to_numpy(labels)
    channel_axis = -1 if data_format == "channels_last" else 1
    own = np.arange(1, batch + 1).reshape((-1,) + (1,) * len(spatial))
    pasted = np.take(mixed, 0, axis=channel_axis) != own
    # All channels of a position come from the same sample.
    assert np.all(np.ptp(mixed, axis=channel_axis) == 0)
    fraction = pasted.reshape(batch, -1).mean(axis=1)
    np.testing.assert_allclose(np.diag(labels), 1.0 - fraction, atol=1e-6)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    for b in range(batch):
        if not pasted[b].any():
            continue
        # The partner read from the labels is the sample pasted in.
        others = labels[b].copy()
        others[b] = -1
        partner = others.argmax()
        assert np.all(
            np.take(mixed, 0, axis=channel_axis)[b][pasted[b]] == (partner + 1)
        )
        # The pasted set is a box: the product of its projections.
        box = np.ones_like(pasted[b])
        for axis in range(len(spatial)):
            rest = tuple(a for a in range(len(spatial)) if a != axis)
            proj = pasted[b].any(axis=rest) if rest else pasted[b]
            box = box & proj.reshape(
                [-1 if a == axis else 1 for a in range(len(spatial))]
            )
        np.testing.assert_array_equal(pasted[b], box)
    return fraction, labels


def test_contract():
    harness.assert_layer_contract(
        CutMixLayer,
        {"mode": "elem", "data_format": "channels_last"},
        [(6, 5, 3), (4,)],
        select=first,
    )


@pytest.mark.parametrize(
    "spatial, data_format, mode",
    [
        ((8, 8), "channels_last", "elem"),
        ((8, 8), "channels_first", "batch"),
        ((6, 11), "channels_first", "elem"),
        ((6, 11), "channels_last", "batch"),
        ((12,), "channels_last", "elem"),
        ((12,), "channels_first", "batch"),
        ((4, 5, 6), "channels_first", "elem"),
        ((4, 5, 6), "channels_last", "batch"),
    ],
    ids=str,
)
def test_label_weight_is_the_pasted_fraction(spatial, data_format, mode):
    layer = CutMixLayer(mode=mode, data_format=data_format, seed=3)
    largest = 0.0
    for _ in range(3):  # a batch-mode draw may paste an empty box
        fraction, _ = check_exact_boxes(layer, spatial, data_format)
        largest = max(largest, fraction.max())
        if mode == "batch":
            # One box for the whole batch: equal areas (self-partners
            # paste nothing visible).
            visible = fraction[fraction > 0]
            assert visible.size == 0 or np.ptp(visible) == 0.0
    assert largest > 0.0


def test_pair_mode_swaps_the_same_box():
    layer = CutMixLayer(mode="pair", data_format="channels_last", seed=1)
    x = tagged(48, (8, 8), "channels_last")
    layer.num_classes = 48
    mixed, labels = layer((x, np.arange(48)))
    mixed, labels = harness.to_numpy(mixed)[..., 0], harness.to_numpy(labels)
    check_exact_boxes(
        CutMixLayer(mode="pair", data_format="channels_last", seed=1),
        (8, 8),
        "channels_last",
    )
    for b in range(48):
        others = labels[b].copy()
        others[b] = -1
        p = others.argmax() if labels[b, b] < 1 else b
        np.testing.assert_allclose(labels[p, p], labels[b, b], atol=1e-6)
        np.testing.assert_array_equal(mixed[b] != b + 1, mixed[p] != p + 1)


def test_box_centre_is_uniform_and_the_box_clipped():
    n, size = 4000, 16
    layer = CutMixLayer(
        mode="elem", data_format="channels_last", seed=7, num_classes=2
    )
    x = np.zeros((n, size, size, 1), "float32")
    x[1::2] = 1.0  # odd samples are ones
    mixed, labels = layer((x, np.arange(n) % 2))
    mixed = harness.to_numpy(mixed)[..., 0]
    labels = harness.to_numpy(labels)
    pasted = mixed != x[..., 0]
    hit = pasted.any(axis=(1, 2))
    # Paste coverage per position: a uniform centre clipped at the border
    # covers border pixels about half as often as central ones.
    coverage = pasted[hit].mean(axis=0)
    centre = coverage[6:10, 6:10].mean()
    corner = coverage[0, 0]
    assert 0.15 < corner / centre < 0.5
    edge = coverage[0, 6:10].mean()
    assert 0.35 < edge / centre < 0.75
    # The box touches each border in some samples (it is not kept inside).
    for border in (
        pasted[:, 0, :],
        pasted[:, -1, :],
        pasted[:, :, 0],
        pasted[:, :, -1],
    ):
        assert border.any(axis=1).mean() > 0.1


def test_without_correction_lambda_is_beta_and_boxes_shrink():
    layer = CutMixLayer(
        alpha=1.0, mode="elem", correct_lam=False, seed=2, num_classes=2
    )
    n = 5000
    x = np.zeros((n, 1, 1), "float32")
    mixed, lam, partner = layer.mix_images(x)
    lam = harness.to_numpy(lam).astype("float64")
    assert stats.kstest(lam, stats.uniform().cdf).pvalue > 0.01
    # Clipping makes the pasted area smaller than 1 - lambda on average.
    x = tagged(48, (8, 8), "channels_last")
    own = np.arange(1, 49).reshape(-1, 1, 1, 1)
    fractions, weights = [], []
    for _ in range(6):
        mixed, lam, partner = layer.mix_images(x)
        mixed, lam = harness.to_numpy(mixed), harness.to_numpy(lam)
        shift = harness.to_numpy(partner) != np.arange(48)
        fraction = (mixed != own).reshape(48, -1).mean(axis=1)
        fractions.append(fraction[shift])
        weights.append(1.0 - lam[shift])
    fractions, weights = np.concatenate(fractions), np.concatenate(weights)
    assert np.mean(fractions) < np.mean(weights) - 0.05


def test_minmax_draws_side_ratios_in_range_and_stays_inside():
    lo, hi = 0.25, 0.5
    size = 20
    layer = CutMixLayer(
        minmax=(lo, hi), mode="elem", data_format="channels_last", seed=0
    )
    fraction, _ = check_exact_boxes(
        layer, (size, size), "channels_last", batch=64
    )
    x = tagged(64, (size, size), "channels_last")
    mixed, _, partner = CutMixLayer(
        minmax=(lo, hi), mode="elem", data_format="channels_last", seed=0
    ).mix_images(x)
    mixed = harness.to_numpy(mixed)[..., 0]
    own = np.arange(1, 65).reshape(-1, 1, 1)
    pasted = mixed != own
    for b in np.flatnonzero(pasted.any(axis=(1, 2))):
        rows = np.flatnonzero(pasted[b].any(axis=1))
        cols = np.flatnonzero(pasted[b].any(axis=0))
        for span in (len(rows), len(cols)):
            assert int(lo * size) <= span < int(hi * size) + 1


def test_probability_zero_pastes_nothing():
    x = tagged(8, (6, 6), "channels_last")
    layer = CutMixLayer(probability=0.0, num_classes=8, seed=0)
    mixed, labels = layer((x, np.arange(8)))
    np.testing.assert_array_equal(harness.to_numpy(mixed), x)
    np.testing.assert_array_equal(harness.to_numpy(labels), np.eye(8))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_odd_batches(batch, mode):
    layer = CutMixLayer(mode=mode, data_format="channels_last", seed=5)
    check_exact_boxes(layer, (5, 5), "channels_last", batch=batch)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"alpha": 0}, "argument `alpha`"),
        ({"minmax": (0.5, 0.2)}, "argument `minmax`.*increasing"),
        ({"minmax": (0.0, 0.5)}, "argument `minmax`"),
        ({"minmax": (0.2, 1.5)}, "argument `minmax`"),
        ({"minmax": 0.3}, "argument `minmax`"),
        ({"minmax": (0.1, 0.2, 0.3)}, "argument `minmax`"),
        ({"data_format": "nhwc"}, "argument `data_format`"),
        ({"mode": "pixel"}, "argument `mode`"),
        ({"probability": 2}, "argument `probability`"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        CutMixLayer(**kwargs)


def test_rank_below_three_is_rejected():
    with pytest.raises(ValueError, match="argument `inputs`.*rank 3"):
        CutMixLayer(num_classes=2)((np.ones((4, 5), "float32"), np.ones(4)))
    with pytest.raises(ValueError, match="argument `inputs`"):
        CutMixLayer().mix_images(np.ones((4, 5), "float32"))
    with pytest.raises(ValueError, match="argument `inputs`"):
        CutMixLayer(num_classes=3)((keras.Input((5,)), keras.Input((3,))))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_half_precision(policy):
    layer = CutMixLayer(num_classes=4, mode="elem", seed=0, dtype=policy)
    mixed, labels = layer((tagged(4, (5, 5), "channels_last"), np.arange(4)))
    assert keras.backend.standardize_dtype(mixed.dtype) == policy[6:]
    assert keras.backend.standardize_dtype(labels.dtype) == "float32"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"data_format": ""}, "data_format"),
        ({"data_format": True}, "data_format"),
        ({"data_format": "NCHW"}, "data_format"),
        ({"correct_lam": "no"}, "correct_lam"),
        ({"correct_lam": 1}, "correct_lam"),
        ({"correct_lam": None}, "correct_lam"),
        ({"alpha": float("inf")}, "alpha"),
    ],
)
def test_data_format_and_flags_take_only_their_values(kwargs, name):
    value = kwargs[name]
    with pytest.raises(ValueError, match=f"argument `{name}`.*{value!r}"):
        CutMixLayer(**kwargs)
    assert CutMixLayer(data_format=None).data_format == (
        keras.config.image_data_format()
    )


def test_setters_refuse_non_finite_values():
    layer = CutMixLayer(alpha=0.5)
    for value in (float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="argument `alpha`"):
            layer.alpha = value
    assert layer.alpha == 0.5


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_inference_keeps_integer_images(data_format):
    shape = (2, 6, 6, 3) if data_format == "channels_last" else (2, 3, 6, 6)
    x = np.random.default_rng(0).integers(0, 255, size=shape)
    layer = CutMixLayer(num_classes=2, data_format=data_format, seed=0)
    images, _ = layer((x.astype("uint8"), np.arange(2)), training=False)
    np.testing.assert_array_equal(harness.to_numpy(images), x)
    # Training pastes integer values, so they stay whole numbers.
    mixed, _ = layer((x.astype("uint8"), np.arange(2)))
    mixed = harness.to_numpy(mixed)
    np.testing.assert_array_equal(mixed, np.round(mixed))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_empty_batch_in_empty_out(mode):
    layer = CutMixLayer(num_classes=3, mode=mode, seed=0)
    images, labels = layer(
        (np.zeros((0, 5, 5, 2), "float32"), np.zeros((0,), "int32"))
    )
    assert tuple(images.shape) == (0, 5, 5, 2)
    assert tuple(labels.shape) == (0, 3)


def test_symbolic_batch_of_unknown_size_channels_first():
    layer = CutMixLayer(num_classes=4, data_format="channels_first")
    ids = keras.Input((1,), dtype="int32")
    mixed, targets = layer((keras.Input((3, 8, 8)), ids))
    assert tuple(mixed.shape) == (None, 3, 8, 8)
    assert tuple(targets.shape) == (None, 4)


@TF_DATA
def test_tf_data_channels_first(pipeline):
    tf = pytest.importorskip("tensorflow")
    batch = 8
    x = tagged(16, (6, 6), "channels_first")
    layer = CutMixLayer(num_classes=16, data_format="channels_first", seed=1)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(16)))
    for k, (images, labels) in enumerate(
        dataset.batch(batch).map(layer).as_numpy_iterator()
    ):
        own = np.arange(1, batch + 1).reshape(-1, 1, 1) + k * batch
        pasted = images[:, 0] != own
        fraction = pasted.reshape(batch, -1).mean(axis=1)
        ids = np.arange(batch) + k * batch
        np.testing.assert_allclose(labels[np.arange(batch), ids], 1 - fraction)
        # Channels move together.
        assert np.all(np.ptp(images, axis=1) == 0)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_every_mixed_row_has_exactly_two_classes(mode):
    # torchvision's check on 100 x 100 images with unique labels.
    batch, classes = 32, 100
    x = np.random.default_rng(0).random((batch, 3, 100, 100))
    layer = CutMixLayer(
        num_classes=classes, mode=mode, data_format="channels_first", seed=0
    )
    _, labels = layer((x.astype("float32"), np.arange(batch)))
    labels = harness.to_numpy(labels)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal((labels != 0).sum(axis=1), 2)
