"""Tests for keras_regularize.constraints.max_norm: MaxNorm, apply_max_norm."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_regularize.constraints import MaxNorm
from keras_regularize.constraints import apply_max_norm
from tests.harness import jit_modes
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


# apply_max_norm: a layout-aware MaxNorm on every kernel of a model.

LIMIT = 0.5
L = keras.layers


def _fan_in_columns(w):
    # (..., out): one unit per last-axis entry.
    return w.reshape(-1, w.shape[-1])


def _transpose_columns(w):
    # (..., out, in): one unit per output filter, axis -2.
    return _fan_in_columns(np.moveaxis(w, -2, -1))


def _depthwise_columns(w):
    # (..., in, multiplier): one unit per (channel, multiplier) pair.
    return w.reshape(-1, w.shape[-2] * w.shape[-1])


def _rows(w):
    return w.T


# name -> (layer factory, input shape, [(variable name, unit columns)])
CASES = {
    "Dense": (lambda: L.Dense(6), (5,), [("kernel", _fan_in_columns)]),
    "Conv1D": (lambda: L.Conv1D(4, 3), (8, 3), [("kernel", _fan_in_columns)]),
    "Conv2D": (
        lambda: L.Conv2D(4, 3),
        (6, 6, 3),
        [("kernel", _fan_in_columns)],
    ),
    "Conv3D": (
        lambda: L.Conv3D(2, 2),
        (4, 4, 4, 2),
        [("kernel", _fan_in_columns)],
    ),
    "Conv1DTranspose": (
        lambda: L.Conv1DTranspose(4, 3),
        (6, 3),
        [("kernel", _transpose_columns)],
    ),
    "Conv2DTranspose": (
        lambda: L.Conv2DTranspose(4, 3),
        (4, 4, 3),
        [("kernel", _transpose_columns)],
    ),
    "Conv3DTranspose": (
        lambda: L.Conv3DTranspose(2, 2),
        (3, 3, 3, 2),
        [("kernel", _transpose_columns)],
    ),
    "DepthwiseConv1D": (
        lambda: L.DepthwiseConv1D(3, depth_multiplier=2),
        (8, 3),
        [("kernel", _depthwise_columns)],
    ),
    "DepthwiseConv2D": (
        lambda: L.DepthwiseConv2D(3, depth_multiplier=2),
        (6, 6, 3),
        [("kernel", _depthwise_columns)],
    ),
    "SeparableConv2D": (
        lambda: L.SeparableConv2D(4, 3, depth_multiplier=2),
        (6, 6, 3),
        [
            ("depthwise_kernel", _depthwise_columns),
            ("pointwise_kernel", _fan_in_columns),
        ],
    ),
    "Embedding": (lambda: L.Embedding(10, 6), (7,), [("embeddings", _rows)]),
}


def _model(name):
    factory, shape, _ = CASES[name]
    dtype = "int32" if name == "Embedding" else "float32"
    inputs = keras.Input(shape, dtype=dtype)
    layer = factory()
    x = L.Flatten()(layer(inputs))
    return keras.Model(inputs, L.Dense(1)(x)), layer


def _inputs(name, n=16):
    _, shape, _ = CASES[name]
    rng = np.random.default_rng(0)
    if name == "Embedding":
        return rng.integers(0, 10, size=(n,) + shape).astype("int32")
    return rng.normal(size=(n,) + shape).astype("float32")


def _column_norms(w, columns):
    return np.sqrt(np.sum(np.square(columns(w).astype("float64")), axis=0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_high_learning_rate_training_keeps_every_unit_under_the_limit(name):
    model, layer = _model(name)
    assert apply_max_norm(model, LIMIT) is model
    model.compile(
        optimizer=keras.optimizers.SGD(5.0),
        loss="mse",
        jit_compile=jit_modes()[-1],
    )
    x = _inputs(name)
    y = np.full((len(x), 1), 50.0, "float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for attr, columns in CASES[name][2]:
        w = to_numpy(getattr(layer, attr))
        norms = _column_norms(w, columns)
        assert np.isfinite(w).all()
        assert norms.max() <= LIMIT + 1e-6, (attr, norms.max())
        # The high learning rate pushed some units to the limit.
        assert norms.max() >= LIMIT * (1 - 1e-5), (attr, norms.max())
    head = to_numpy(model.layers[-1].kernel)
    assert _column_norms(head, _fan_in_columns).max() <= LIMIT + 1e-6


def test_eager_training_too():
    model, layer = _model("Conv2DTranspose")
    apply_max_norm(model, LIMIT)
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    model.run_eagerly = True
    x = _inputs("Conv2DTranspose", n=8)
    model.fit(x, np.full((8, 1), 50.0), batch_size=8, verbose=0)
    norms = _column_norms(to_numpy(layer.kernel), _transpose_columns)
    assert LIMIT * (1 - 1e-5) <= norms.max() <= LIMIT + 1e-6


def test_before_build_nested_models_and_keras_file(tmp_path):
    inner = keras.Sequential([L.Conv2DTranspose(3, 2), L.Flatten()])
    model = keras.Sequential([inner, L.Dense(2)])  # not built yet
    apply_max_norm(model, 1.0)
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")
    model.fit(x, np.full((8, 2), 50.0), verbose=0)
    kernel = inner.layers[0].kernel
    assert isinstance(kernel.constraint, MaxNorm)
    assert kernel.constraint.axis == (0, 1, 3)
    norms = _column_norms(to_numpy(kernel), _transpose_columns)
    assert norms.max() <= 1.0 + 1e-6
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    constraint = loaded.layers[0].layers[0].kernel.constraint
    assert isinstance(constraint, MaxNorm)
    assert (constraint.axis, constraint.max_value) == ((0, 1, 3), 1.0)


def test_replaces_existing_constraints_and_leaves_biases():
    layer = L.Dense(3, kernel_constraint="non_neg")
    model = keras.Sequential([keras.Input((2,)), layer])
    apply_max_norm(model, 2.0)
    assert isinstance(layer.kernel.constraint, MaxNorm)
    assert layer.bias.constraint is None


def test_warns_when_nothing_matches():
    model = keras.Sequential([keras.Input((2,)), L.ReLU()])
    with pytest.warns(UserWarning, match="nothing was constrained"):
        apply_max_norm(model)


def test_apply_max_norm_bad_max_value():
    model = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    with pytest.raises(ValueError, match="argument `max_value`.*=0"):
        apply_max_norm(model, 0)


def _mha_model(num_heads=2, key_dim=3, dim=4, steps=3):
    inputs = keras.Input((steps, dim))
    mha = L.MultiHeadAttention(num_heads, key_dim)
    x = L.Flatten()(mha(inputs, inputs))
    return keras.Model(inputs, L.Dense(1)(x)), mha


def _mha_unit_norms(mha):
    """NumPy norms per output unit of the four projections."""
    norms = {}
    for name in ("query", "key", "value"):
        # (dim, heads, key_dim): one unit per (head, feature) pair.
        w = to_numpy(getattr(mha, f"_{name}_dense").kernel)
        norms[name] = np.sqrt(np.sum(np.square(w.astype("float64")), axis=0))
    # (heads, key_dim, dim): one unit per output feature.
    w = to_numpy(mha._output_dense.kernel).astype("float64")
    norms["output"] = np.sqrt(np.sum(np.square(w), axis=(0, 1)))
    return norms


@pytest.mark.parametrize("jit", jit_modes())
def test_multi_head_attention_projections_are_capped_per_output_unit(jit):
    model, mha = _mha_model()
    apply_max_norm(model, LIMIT)
    assert mha._query_dense.kernel.constraint.axis == (0,)
    assert mha._output_dense.kernel.constraint.axis == (0, 1)
    model.compile(
        optimizer=keras.optimizers.SGD(5.0), loss="mse", jit_compile=jit
    )
    x = np.random.default_rng(0).normal(size=(16, 3, 4)).astype("float32")
    model.fit(x, np.full((16, 1), 50.0), batch_size=8, verbose=0)
    norms = _mha_unit_norms(mha)
    for name, unit_norms in norms.items():
        assert unit_norms.max() <= LIMIT + 1e-6, (name, unit_norms)
    # The learning rate drove the query projection to the limit.
    assert norms["query"].max() >= LIMIT * (1 - 1e-5)


def test_unbuilt_multi_head_attention_is_constrained_when_built():
    mha = L.MultiHeadAttention(2, 3)
    apply_max_norm(mha, LIMIT)  # its projections do not exist yet
    x = keras.ops.ones((2, 3, 4))
    mha(x, x)
    assert mha._key_dense.kernel.constraint.axis == (0,)
    assert mha._output_dense.kernel.constraint.axis == (0, 1)
    assert mha._value_dense.kernel.constraint.max_value == LIMIT


def test_unbuilt_einsum_dense_in_a_sequential_model():
    layer = L.EinsumDense("...b,bc->...c", 5, bias_axes="c")
    model = keras.Sequential([layer])
    apply_max_norm(model, LIMIT)
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3, 6)).astype("float32")
    model.fit(x, np.full((8, 3, 5), 50.0), verbose=0)
    assert layer.kernel.constraint.axis == (0,)
    norms = _column_norms(to_numpy(layer.kernel), _fan_in_columns)
    assert LIMIT * (1 - 1e-5) <= norms.max() <= LIMIT + 1e-6


@pytest.mark.parametrize(
    "equation, axes",
    [
        ("ab,bc->ac", (0,)),
        ("abc,cde->abde", (0,)),  # MultiHeadAttention query, key, value
        ("abcd,cde->abe", (0, 1)),  # MultiHeadAttention output
        ("...b,bc->...c", (0,)),
        ("ab...,bc->ac...", (0,)),
        ("abc,cd->abd", (0,)),
        ("abc,bcd->ad", (0, 1)),
        ("ab,bc->abc", ()),  # b reaches the output: every element a unit
    ],
)
def test_einsum_unit_axes_are_the_kernel_subscripts_not_in_the_output(
    equation, axes
):
    from keras_regularize.constraints._kernel_layout import einsum_reduce_axes

    assert einsum_reduce_axes(equation) == axes


class _Scale(L.Layer):
    """A custom layer with a weight matrix apply_max_norm cannot know."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2), name="w")

    def call(self, x):
        return x @ self.w


def test_warning_names_every_skipped_layer_while_the_rest_is_constrained():
    inputs = keras.Input((3, 2))
    x = L.LSTM(4, name="my_lstm")(inputs)
    x = _Scale(name="my_scale")(x)
    dense = L.Dense(1, name="head")
    model = keras.Model(inputs, dense(x))
    with pytest.warns(UserWarning) as record:
        apply_max_norm(model, LIMIT)
    message = " ".join(str(w.message) for w in record)
    assert "LSTMCell" in message and "recurrent_kernel (4, 16)" in message
    assert "_Scale 'my_scale'" in message and "w (4, 2)" in message
    assert "head" not in message
    assert isinstance(dense.kernel.constraint, MaxNorm)


def test_unbuilt_skipped_layers_are_named_once_when_built():
    model = keras.Sequential([L.LSTM(3), L.Dense(1)])
    apply_max_norm(model, LIMIT)
    with pytest.warns(UserWarning) as record:
        model.build((None, 5, 2))
    messages = [str(w.message) for w in record if "apply_max_norm" in str(w)]
    assert len(messages) == 1 and "LSTMCell" in messages[0]
    assert isinstance(model.layers[-1].kernel.constraint, MaxNorm)


def test_no_warning_when_every_kernel_is_constrained(recwarn):
    model, _ = _mha_model()
    apply_max_norm(model, LIMIT)
    assert not [w for w in recwarn if "apply_max_norm" in str(w.message)]


@pytest.mark.parametrize("jit", jit_modes())
def test_apply_max_norm_after_fit_takes_effect_in_the_next_fit(jit):
    model, layer = _model("Dense")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit
    )
    x = _inputs("Dense")
    y = np.full((len(x), 1), 50.0, "float32")
    model.fit(x, y, batch_size=8, verbose=0)
    cap = 0.1
    assert _column_norms(to_numpy(layer.kernel), _fan_in_columns).max() > cap
    apply_max_norm(model, cap)
    model.fit(x, y, batch_size=8, verbose=0)
    for w in (layer.kernel, model.layers[-1].kernel):
        norms = _column_norms(to_numpy(w), _fan_in_columns)
        assert norms.max() <= cap + 1e-6, norms.max()
    # A new cap replaces the old one in the compiled step as well.
    apply_max_norm(model, 0.05)
    model.fit(x, y, batch_size=8, verbose=0)
    norms = _column_norms(to_numpy(layer.kernel), _fan_in_columns)
    assert 0.05 * (1 - 1e-5) <= norms.max() <= 0.05 + 1e-6


def test_apply_max_norm_from_a_callback_binds_the_following_epochs():
    model, layer = _model("Dense")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="mse",
        jit_compile=jit_modes()[-1],
    )

    class _CapAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                apply_max_norm(self.model, 0.1)

    x = _inputs("Dense")
    model.fit(
        x,
        np.full((len(x), 1), 50.0),
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[_CapAfterFirstEpoch()],
    )
    norms = _column_norms(to_numpy(layer.kernel), _fan_in_columns)
    assert norms.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("model", ["model", 3, None, keras.optimizers.SGD()])
def test_model_must_be_a_keras_layer(model):
    with pytest.raises(ValueError, match="argument `model`") as info:
        apply_max_norm(model)
    assert f"model={model!r}" in str(info.value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, None])
def test_non_finite_or_non_number_max_value(value):
    model = keras.Sequential([keras.Input((2,)), L.Dense(1)])
    with pytest.raises(ValueError, match="argument `max_value`") as info:
        apply_max_norm(model, value)
    assert "inf" not in str(info.value).split("Received")[0]
