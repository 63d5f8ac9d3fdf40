"""Property: after apply_max_norm, MaxNorm holds per unit on every layer.

Units are computed here in NumPy from each layer's documented kernel
layout, independently of the axes the package picks.
"""

import keras
import numpy as np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_regularize.constraints import apply_max_norm
from tests.harness import to_numpy

L = keras.layers


def _units_last(w):  # (..., out): Dense, Conv*D, pointwise
    return w.reshape(-1, w.shape[-1])


def _units_transposed(w):  # (..., out, in)
    return _units_last(np.moveaxis(w, -2, -1))


def _units_depthwise(w):  # (..., channels, multiplier)
    return w.reshape(-1, w.shape[-2] * w.shape[-1])


def _units_rows(w):  # (vocabulary, dim)
    return w.T


def _units_first(w):  # (in, heads, key_dim): MHA query/key/value
    return w.reshape(w.shape[0], -1)


def _dense(n):
    return L.Dense(n), (n + 1,), [("kernel", _units_last)]


def _conv1d(n):
    return L.Conv1D(n, 2), (5, n), [("kernel", _units_last)]


def _conv2d(n):
    return L.Conv2D(n, 2), (4, 4, 2), [("kernel", _units_last)]


def _depthwise(n):
    layer = L.DepthwiseConv2D(2, depth_multiplier=n)
    return layer, (4, 4, 3), [("kernel", _units_depthwise)]


def _transposed(n):
    return L.Conv2DTranspose(n, 2), (3, 3, 2), [("kernel", _units_transposed)]


def _embedding(n):
    return L.Embedding(7, n), (3,), [("embeddings", _units_rows)]


def _einsum(n):
    layer = L.EinsumDense("abc,cde->abde", (3, n, 2))
    return layer, (3, 4), [("kernel", _units_first)]


LAYERS = {
    "Dense": _dense,
    "Conv1D": _conv1d,
    "Conv2D": _conv2d,
    "DepthwiseConv2D": _depthwise,
    "Conv2DTranspose": _transposed,
    "Embedding": _embedding,
    "EinsumDense": _einsum,
}


def _norms(columns):
    return np.sqrt(np.sum(np.square(columns.astype("float64")), axis=0))


def _constrain_like_the_optimizer(variables):
    for v in variables:
        if v.constraint is not None:
            v.assign(v.constraint(v))


def _randomize(model, scale, seed):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign((scale * rng.normal(size=w.shape)).astype("float32"))


def _check(weights_before, weights_after, units, cap):
    before = _norms(units(weights_before))
    after = _norms(units(weights_after))
    assert after.max() <= cap * (1 + 1e-6), (after.max(), cap)
    under = before <= cap
    # Units already under the cap are returned bit for bit.
    np.testing.assert_array_equal(
        units(weights_after)[:, under], units(weights_before)[:, under]
    )
    np.testing.assert_allclose(after[~under], cap, rtol=1e-5)


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(LAYERS)),
    units=st.integers(1, 4),
    scale=st.floats(0.05, 5.0),
    cap=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)
def test_max_norm_holds_per_unit_for_every_layer_type(
    name, units, scale, cap, seed
):
    layer, shape, slots = LAYERS[name](units)
    layer.build((None,) + shape)
    model = keras.Sequential([layer])
    _randomize(model, scale, seed)
    before = {attr: to_numpy(getattr(layer, attr)) for attr, _ in slots}
    apply_max_norm(model, cap)
    _constrain_like_the_optimizer(model.trainable_variables)
    for attr, unit_fn in slots:
        _check(before[attr], to_numpy(getattr(layer, attr)), unit_fn, cap)


@settings(max_examples=10, deadline=None)
@given(
    heads=st.integers(1, 3),
    key_dim=st.integers(1, 3),
    scale=st.floats(0.05, 3.0),
    cap=st.floats(0.1, 2.0),
    seed=st.integers(0, 2**16),
)
def test_max_norm_holds_per_unit_for_multi_head_attention(
    heads, key_dim, scale, cap, seed
):
    model = mha = L.MultiHeadAttention(heads, key_dim)
    mha.build((None, 3, 4), (None, 3, 4))
    _randomize(mha, scale, seed)
    projections = {
        "query": (mha._query_dense, _units_first),
        "key": (mha._key_dense, _units_first),
        "value": (mha._value_dense, _units_first),
        # (heads, key_dim, dim): one unit per output feature.
        "output": (mha._output_dense, _units_last),
    }
    before = {k: to_numpy(p.kernel) for k, (p, _) in projections.items()}
    apply_max_norm(model, cap)
    _constrain_like_the_optimizer(model.trainable_variables)
    for key, (projection, unit_fn) in projections.items():
        _check(before[key], to_numpy(projection.kernel), unit_fn, cap)
    # Biases are left alone.
    assert all(v.constraint is None for v in model.weights if "bias" in v.path)
