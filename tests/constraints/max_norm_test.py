"""Tests for keras_regularize.constraints.MaxNorm."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_regularize.constraints import MaxNorm
from tests.harness import to_numpy


def _unit_norms(w, axes):
    return np.sqrt(np.sum(np.square(w.astype("float64")), axis=axes))


def _weights(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize(
    "shape, axis, axes",
    [
        ((16, 8), None, (0,)),
        ((3, 3, 16, 8), None, (0, 1, 2)),
        ((3, 3, 16, 8), (0, 1), (0, 1)),
        ((10, 6), 1, (1,)),
        ((10, 6), -1, (1,)),
        ((5,), None, ()),
    ],
)
def test_units_below_the_limit_are_bit_identical(shape, axis, axes):
    w = _weights(shape)
    limit = float(_unit_norms(w, axes).max()) * 1.01
    out = to_numpy(MaxNorm(limit, axis=axis)(w))
    np.testing.assert_array_equal(out, w)


@pytest.mark.parametrize(
    "shape, axis, axes",
    [
        ((16, 8), None, (0,)),
        ((3, 3, 16, 8), None, (0, 1, 2)),
        ((3, 3, 16, 8), [0, 1], (0, 1)),
        ((10, 6), 1, (1,)),
    ],
)
def test_units_above_are_rescaled_to_the_limit_and_others_untouched(
    shape, axis, axes
):
    w = _weights(shape)
    norms = _unit_norms(w, axes)
    limit = float(np.median(norms))
    out = to_numpy(MaxNorm(limit, axis=axis)(w))
    new = _unit_norms(out, axes)
    over = norms > limit
    assert over.any() and (~over).any()
    np.testing.assert_allclose(new[over], limit, rtol=1e-6)
    assert new.max() <= limit + 1e-6
    keep = np.expand_dims(~over, axes) if axes else ~over
    keep = np.broadcast_to(keep, w.shape)
    np.testing.assert_array_equal(out[keep], w[keep])
    # Rescaling keeps each unit's direction.
    scale = np.where(over, limit / norms, 1.0)
    scale = np.expand_dims(scale, axes) if axes else scale
    np.testing.assert_allclose(out, w * scale, rtol=1e-5, atol=1e-7)


def test_default_axis_bounds_conv_filters_where_keras_does_not():
    w = _weights((3, 3, 16, 8))
    ours = _unit_norms(to_numpy(MaxNorm(2.0)(w)), (0, 1, 2))
    theirs = _unit_norms(to_numpy(keras.constraints.MaxNorm(2.0)(w)), (0, 1, 2))
    assert ours.max() <= 2.0 + 1e-6
    assert theirs.max() > 5.0  # Keras's default axis=0 norms columns only


def test_keras_maxnorm_perturbs_weights_below_the_limit():
    w = _weights((16, 8)) * 0.01
    assert not np.array_equal(to_numpy(keras.constraints.MaxNorm(2.0)(w)), w)
    np.testing.assert_array_equal(to_numpy(MaxNorm(2.0)(w)), w)


def test_zero_weights_stay_zero():
    out = to_numpy(MaxNorm(1.0)(np.zeros((4, 3), "float32")))
    np.testing.assert_array_equal(out, np.zeros((4, 3)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_dtype_is_kept(dtype):
    w = ops.cast(_weights((16, 8)), dtype)
    out = MaxNorm(1.0)(w)
    assert ops.dtype(out) == dtype
    norms = _unit_norms(to_numpy(ops.cast(out, "float32")), (0,))
    assert norms.max() <= 1.0 * (1 + 1e-2)
    small = ops.cast(_weights((16, 8)) * 0.01, dtype)
    np.testing.assert_array_equal(
        to_numpy(ops.cast(MaxNorm(1.0)(small), "float32")),
        to_numpy(ops.cast(small, "float32")),
    )


def test_config_and_serialization():
    c = MaxNorm(2.5, axis=(0, 1))
    config = c.get_config()
    assert config == {"max_value": 2.5, "axis": [0, 1]}
    again = MaxNorm.from_config(config)
    assert again.axis == (0, 1) and again.max_value == 2.5
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(c)
    )
    assert type(restored) is MaxNorm and restored.get_config() == config
    assert keras.constraints.get(keras.constraints.serialize(c)).axis == (0, 1)


@pytest.mark.parametrize(
    "value", [0, -1.0, float("nan"), "3", float("inf"), -float("inf"), True]
)
def test_bad_max_value(value):
    with pytest.raises(ValueError, match="argument `max_value`") as info:
        MaxNorm(value)
    assert f"max_value={value!r}" in str(info.value)
    assert "inf]" not in str(info.value) and "inf)" not in str(info.value)


def test_caps_columns_as_keras_maxnorm_does_for_dense_kernels():
    # Keras's own example: columns of norm 0, 1, 3 and sqrt(27) under 2.
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    expected = np.array(
        [[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [2 / np.sqrt(3)] * 3]
    ).T
    for constraint in (MaxNorm(2.0), MaxNorm(2.0, axis=0)):
        out = to_numpy(constraint(x.astype("float32")))
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    theirs = to_numpy(keras.constraints.MaxNorm(2.0)(x.astype("float32")))
    np.testing.assert_allclose(theirs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["int32", "int8", "bool"])
def test_integer_kernel_raises_instead_of_being_zeroed(dtype):
    w = ops.cast(np.array([[3, 0], [4, 1]]), dtype)
    with pytest.raises(ValueError, match="MaxNorm.*floating-point.*dtype"):
        MaxNorm(1.0)(w)


@pytest.mark.parametrize(
    "axis",
    ["a", 1.5, True, False, (True,), (0, 1.5), ("a",), [0, 0], {0}, None],
)
def test_axis_is_validated_at_construction(axis):
    if axis is None:
        assert MaxNorm(axis=None).axis is None
        return
    with pytest.raises(ValueError, match="argument `axis`") as info:
        MaxNorm(axis=axis)
    assert f"axis={axis!r}" in str(info.value)


@pytest.mark.parametrize("axis", [0, -1, (0, 1), [1, 0], np.int64(1), ()])
def test_valid_axes_are_kept_as_ints(axis):
    got = MaxNorm(axis=axis).axis
    if isinstance(axis, (list, tuple)):
        assert got == tuple(int(a) for a in axis)
    else:
        assert got == int(axis) and type(got) is int


@pytest.mark.parametrize(
    "axis, shape", [(7, (4, 3)), (-3, (4, 3)), ((0, 2), (4, 3)), (3, (2, 2, 2))]
)
def test_axis_outside_the_kernel_rank_names_axis_and_shape(axis, shape):
    with pytest.raises(ValueError, match="argument `axis`") as info:
        MaxNorm(1.0, axis=axis)(np.ones(shape, "float32"))
    message = str(info.value)
    assert f"axis={axis!r}" in message and str(shape) in message


def test_axes_naming_one_dimension_twice_are_refused_at_call():
    with pytest.raises(ValueError, match="distinct.*axis=\\(0, -2\\)"):
        MaxNorm(1.0, axis=(0, -2))(np.ones((4, 3), "float32"))


def test_empty_axis_caps_every_element():
    w = np.array([[3.0, -0.5], [-4.0, 0.2]], "float32")
    out = to_numpy(MaxNorm(1.0, axis=())(w))
    expected = np.array([[1.0, -0.5], [-1.0, 0.2]], "float32")
    np.testing.assert_array_equal(out, expected)
    assert MaxNorm.from_config(MaxNorm(1.0, axis=()).get_config()).axis == ()
