"""Tests for keras_regularize.layers.DropBlock2D."""

import keras
import numpy as np
import pytest

from keras_regularize.layers import DropBlock2D
from tests import harness


def expected_fraction(height, width, size, rate):
    """Exact expected dropped fraction under the paper's gamma."""
    rows, cols = height - size + 1, width - size + 1
    gamma = rate / size**2 * height * width / (rows * cols)
    cover_r = [
        min(r, rows - 1) - max(0, r - size + 1) + 1 for r in range(height)
    ]
    cover_c = [
        min(c, cols - 1) - max(0, c - size + 1) + 1 for c in range(width)
    ]
    n = np.outer(cover_r, cover_c)
    return float(np.mean(1.0 - (1.0 - gamma) ** n))


def _drop(shape, rate, size, data_format="channels_last", seed=0):
    layer = DropBlock2D(rate, size, data_format=data_format, seed=seed)
    return harness.to_numpy(layer(np.ones(shape, "float32"), training=True))


@pytest.mark.parametrize(
    "data_format, shape",
    [("channels_last", (8, 6, 3)), ("channels_first", (3, 8, 6))],
)
def test_contract(data_format, shape):
    harness.assert_layer_contract(
        DropBlock2D,
        {"rate": 0.3, "block_size": 3, "data_format": data_format},
        shape,
    )


@pytest.mark.parametrize(
    "height, width, size, rate",
    [(16, 16, 3, 0.1), (40, 8, 3, 0.3), (8, 40, 5, 0.2), (7, 7, 7, 0.1)],
)
def test_dropped_fraction_on_square_and_non_square_maps(
    height, width, size, rate
):
    y = _drop((32, height, width, 8), rate, size)
    dropped = y == 0.0
    n = dropped.size
    expected = expected_fraction(height, width, size, rate)
    # Blocks make drops correlated: allow 6 SDs of a block-sized binomial.
    sd = np.sqrt(expected * (1 - expected) * size * size / n)
    assert abs(dropped.mean() - expected) < 6 * sd + 1e-3
    # The paper's gamma ignores block overlaps, so the expectation lands a
    # little under `rate`; keras-cv 0.9 drops 4.4% at rate 0.3 on a 40x8 map.
    assert 0.8 * rate < expected <= rate + 1e-9
    # Kept activations are rescaled so the batch total is preserved.
    np.testing.assert_allclose(y.sum(), float(n), rtol=1e-4)


def _opening(mask, size):
    """Morphological opening by a size x size square (erode then dilate)."""
    h, w = mask.shape
    corners = np.zeros((h - size + 1, w - size + 1), bool)
    for r in range(h - size + 1):
        for c in range(w - size + 1):
            corners[r, c] = mask[r : r + size, c : c + size].all()
    opened = np.zeros_like(mask)
    for r, c in zip(*np.nonzero(corners)):
        opened[r : r + size, c : c + size] = True
    return opened


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_dropped_regions_are_unions_of_full_blocks(data_format):
    size = 3
    shape = (4, 12, 9, 5) if data_format == "channels_last" else (4, 5, 12, 9)
    y = _drop(shape, 0.2, size, data_format, seed=1)
    if data_format == "channels_first":
        y = np.transpose(y, (0, 2, 3, 1))
    maps = np.moveaxis(y == 0.0, -1, 1).reshape(-1, 12, 9)
    assert maps.any()
    for mask in maps:
        # A union of size x size squares is unchanged by an opening.
        np.testing.assert_array_equal(_opening(mask, size), mask)


def test_every_row_and_column_can_be_dropped():
    y = _drop((64, 40, 8, 4), 0.3, 3, seed=2)
    dropped = y == 0.0
    assert np.all(dropped.any(axis=(0, 2, 3))), "a row was never dropped"
    assert np.all(dropped.any(axis=(0, 1, 3))), "a column was never dropped"


def test_identity_at_inference():
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype("float32")
    layer = DropBlock2D(0.5, 3)
    np.testing.assert_array_equal(harness.to_numpy(layer(x)), x)


@pytest.mark.parametrize(
    "kwargs, shape, message",
    [
        ({"block_size": 0}, None, "Received: block_size=0"),
        ({"block_size": 2.5}, None, "Received: block_size=2.5"),
        ({"rate": 1.2}, None, "Received: rate=1.2"),
        ({"data_format": "NHWC"}, None, "Received: data_format='NHWC'"),
        ({"block_size": 3}, (2, 8, 8), r"rank-4.*Received: shape=\(2, 8, 8\)"),
        ({"block_size": 9}, (2, 8, 20, 3), r"8x20\).*Received: block_size=9"),
    ],
)
def test_bad_inputs(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        kwargs = {"data_format": "channels_last", **kwargs}
        layer = DropBlock2D(**kwargs)
        layer(np.ones(shape, "float32"), training=True)


def test_keras_run_layer_test_cross_check():
    from keras.src.testing import test_case

    test_case.TestCase().run_layer_test(
        DropBlock2D,
        init_kwargs={
            "rate": 0.2,
            "block_size": 3,
            "data_format": "channels_last",
            "seed": 1,
        },
        input_shape=(2, 7, 5, 3),
        expected_output_shape=(2, 7, 5, 3),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
        expected_num_seed_generators=1,
    )


_SHAPES = {"channels_last": (2, 6, 5, 3), "channels_first": (2, 3, 6, 5)}


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_integer_inputs_are_refused_naming_the_layer_and_dtype(
    data_format, dtype
):
    # Casting would truncate the fractional rescale factor count / kept.
    layer = DropBlock2D(0.3, 3, data_format=data_format)
    message = f"`DropBlock2D`.*floating-point.*dtype={dtype}"
    for training in (True, False):
        with pytest.raises(ValueError, match=message):
            layer(np.ones(_SHAPES[data_format], dtype), training=training)
    with pytest.raises(ValueError, match=message):
        DropBlock2D(0.3, 3, data_format=data_format)(
            keras.Input(_SHAPES[data_format][1:], dtype=dtype)
        )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("jit", harness.jit_modes())
def test_empty_batch_gives_an_empty_output(data_format, jit):
    shape = (0,) + _SHAPES[data_format][1:]
    layer = DropBlock2D(0.3, 3, data_format=data_format, seed=0)
    x = np.zeros(shape, "float32")
    assert harness.to_numpy(layer(x, training=True)).shape == shape
    model = harness.AlwaysTraining(layer)
    model.compile(jit_compile=jit)
    assert model.predict_on_batch(x).shape == shape


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_rate_zero_is_exactly_the_identity_in_training(data_format):
    x = np.random.default_rng(0).normal(size=_SHAPES[data_format])
    x = x.astype("float32")
    layer = DropBlock2D(0.0, 3, data_format=data_format, seed=0)
    np.testing.assert_array_equal(harness.to_numpy(layer(x, training=True)), x)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "height, width, size", [(8, 16, 5), (16, 8, 5), (7, 14, 2), (5, 5, 4)]
)
def test_even_blocks_and_non_square_maps_keep_shape_and_total(
    data_format, height, width, size
):
    # timm's shape checks (asymmetric maps, even block sizes), plus our
    # exact rescaling: the batch total of ones is preserved.
    shape = (16, height, width, 2)
    if data_format == "channels_first":
        shape = (16, 2, height, width)
    y = _drop(shape, 0.2, size, data_format, seed=size)
    assert y.shape == shape and (y == 0.0).any()
    np.testing.assert_allclose(y.sum(), float(np.prod(shape)), rtol=1e-4)


def test_data_format_none_follows_the_keras_setting():
    assert DropBlock2D(0.1, 3).data_format == keras.config.image_data_format()


@pytest.mark.parametrize("value", ["", "NCHW", True, 0])
def test_data_format_takes_the_two_keras_values_only(value):
    with pytest.raises(
        ValueError,
        match=f"argument `data_format`.*Received: data_format={value!r}",
    ):
        DropBlock2D(0.1, 3, data_format=value)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rate": float("inf")}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": None}, "rate"),
        ({"block_size": True}, "block_size"),
        ({"block_size": float("inf")}, "block_size"),
        ({"block_size": "3"}, "block_size"),
    ],
)
def test_non_finite_or_mistyped_arguments_are_refused(kwargs, name):
    kwargs = {"rate": 0.1, "block_size": 3, **kwargs}
    with pytest.raises(ValueError, match=f"argument `{name}`.*Received"):
        DropBlock2D(**kwargs)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, "0.2"])
def test_bad_rate_assignment_keeps_the_old_rate(value):
    layer = DropBlock2D(0.1, 3)
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        layer.rate = value
    assert layer.rate == 0.1
