"""Tests for keras_regularize.optimizers.GradientClipping."""

import json

import keras
import numpy as np
import pytest

from keras_regularize.optimizers import GradientClipping
from tests import harness
from tests.optimizers import helpers

JIT = harness.jit_modes()
# Compiling is cheaper than eager steps on JAX, dearer on TensorFlow.
FAST_JIT = harness.BACKEND == "jax"


def _pair_steps(ours, reference, jit, steps=3, seed=0):
    """Trains two same-weight MLPs batch by batch; returns both histories."""
    x, y = helpers.data(seed)
    a, b = helpers.mlp(), helpers.mlp()
    a.compile(optimizer=ours, loss="mse", jit_compile=jit)
    b.compile(optimizer=reference, loss="mse", jit_compile=jit)
    for step in range(steps):
        batch = slice(4 * step, 4 * step + 8)
        a.train_on_batch(x[batch], y[batch])
        b.train_on_batch(x[batch], y[batch])
        for wa, wb in zip(helpers.weights(a), helpers.weights(b)):
            np.testing.assert_array_equal(wa, wb, err_msg=f"step {step}")
    return a, b


@pytest.mark.parametrize("jit", JIT)
def test_global_norm_equals_keras_global_clipnorm_step_for_step(jit):
    ours = GradientClipping(
        keras.optimizers.SGD(0.1, momentum=0.9), threshold=0.5
    )
    reference = keras.optimizers.SGD(0.1, momentum=0.9, global_clipnorm=0.5)
    _pair_steps(ours, reference, jit)
    assert int(ours.step_count.numpy()) == 3
    assert int(ours.clip_count.numpy()) == 3  # the threshold was binding
    assert float(ours.norm_max.numpy()) > 0.5


@pytest.mark.parametrize("jit", JIT)
def test_value_equals_keras_clipvalue_step_for_step(jit):
    ours = GradientClipping(
        keras.optimizers.Adam(0.01), method="value", threshold=0.25
    )
    reference = keras.optimizers.Adam(0.01, clipvalue=0.25)
    _pair_steps(ours, reference, jit)
    assert int(ours.clip_count.numpy()) == 3


def _agc_reference(grads, params, factor, eps):
    out = []
    for g, w in zip(grads, params):
        g, w = g.astype("float64"), w.astype("float64")
        if w.ndim <= 1:
            g_norm, w_norm = np.linalg.norm(g), np.linalg.norm(w)
        else:
            g2, w2 = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
            g_norm = np.linalg.norm(g2, axis=0)
            w_norm = np.linalg.norm(w2, axis=0)
        limit = factor * np.maximum(w_norm, eps)
        scale = np.where(g_norm > limit, limit / np.maximum(g_norm, 1e-6), 1)
        out.append(g * scale)  # broadcasts over the last axis
    return out


def test_agc_matches_numpy_unit_wise_reference():
    rng = np.random.default_rng(3)
    shapes = [(5, 4), (4,), (3, 3, 2, 6)]
    params = [rng.normal(size=s).astype("float32") for s in shapes]
    params[0][:, 1] = 0.0  # a unit at zero: the epsilon floor applies
    grads = [(0.3 * rng.normal(size=s)).astype("float32") for s in shapes]
    grads[2][..., :3] *= 0.001  # some units stay under the limit
    factor, eps = 0.1, 1e-3
    variables = [keras.Variable(p) for p in params]
    opt = GradientClipping(
        keras.optimizers.SGD(1.0), method="agc", threshold=factor, epsilon=eps
    )
    opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    expected = _agc_reference(grads, params, factor, eps)
    for v, p, e in zip(variables, params, expected):
        np.testing.assert_allclose(
            p - harness.to_numpy(v), e, rtol=1e-5, atol=1e-7
        )
    units = expected[2].reshape(-1, 6)
    raw = grads[2].reshape(-1, 6)
    assert np.allclose(units[:, :3], raw[:, :3])  # small units untouched
    assert not np.allclose(units[:, 3:], raw[:, 3:])  # large units clipped
    assert int(opt.clip_count.numpy()) == 1


@pytest.mark.parametrize("jit", JIT)
@pytest.mark.parametrize("method", ["agc", "none", "global_norm"])
def test_compiled_step_matches_closed_form_and_records_norm(method, jit):
    rng = np.random.default_rng(5)
    x, y = helpers.data(seed=2)
    w0 = rng.normal(size=(helpers.D, helpers.K)).astype("float32")
    b0 = rng.normal(size=(helpers.K,)).astype("float32")
    w0[:, 0] = 0.0
    model = helpers.linear(w0, b0)
    threshold = {"agc": 0.05, "none": None, "global_norm": 2.0}[method]
    opt = GradientClipping(
        keras.optimizers.SGD(1.0), method=method, threshold=threshold
    )
    model.compile(optimizer=opt, loss="mse", jit_compile=jit)
    model.train_on_batch(x, y)

    g_w, g_b = helpers.linear_grads(x, y, w0, b0)
    norm = np.sqrt(np.sum(g_w**2) + np.sum(g_b**2))
    np.testing.assert_allclose(opt.gradient_norm.numpy(), norm, rtol=1e-5)
    if method == "agc":
        expected = _agc_reference([g_w, g_b], [w0, b0], threshold, 1e-3)
    elif method == "global_norm":
        expected = [g * min(1.0, threshold / norm) for g in (g_w, g_b)]
    else:
        expected = [g_w, g_b]
    got = [p - w for p, w in zip((w0, b0), helpers.weights(model))]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    assert int(opt.clip_count.numpy()) == (0 if method == "none" else 1)


def test_auto_clips_at_the_running_percentile():
    rng = np.random.default_rng(7)
    opt = GradientClipping(
        keras.optimizers.SGD(1.0), method="auto", percentile=30, history_size=4
    )
    v = keras.Variable(np.zeros(5, "float32"))
    seen = []
    for _ in range(7):
        g = rng.normal(size=5).astype("float32") * rng.uniform(0.5, 5.0)
        before = harness.to_numpy(v)
        opt.apply([keras.ops.convert_to_tensor(g)], [v])
        norm = np.linalg.norm(g.astype("float64"))
        seen.append(norm)
        threshold = np.percentile(seen[-4:], 30)  # the window holds 4
        np.testing.assert_allclose(
            opt.auto_threshold.numpy(), threshold, rtol=1e-5
        )
        step_taken = before - harness.to_numpy(v)
        np.testing.assert_allclose(
            step_taken, g * min(1.0, threshold / norm), rtol=1e-5, atol=1e-7
        )
    assert opt.norm_statistics()["clip_threshold"] == pytest.approx(
        threshold, rel=1e-5
    )
    # A non-finite norm is not written into the history.
    count = int(opt.history_count.numpy())
    bad = np.full(5, np.inf, "float32")
    opt.apply([keras.ops.convert_to_tensor(bad)], [v])
    assert int(opt.history_count.numpy()) == count


@pytest.mark.slow
@pytest.mark.skipif(harness.BACKEND != "torch", reason="torch.compile only")
def test_fit_under_torch_compile():
    x, y = helpers.data()
    model = helpers.mlp()
    opt = GradientClipping(keras.optimizers.SGD(0.01), method="auto")
    model.compile(optimizer=opt, loss="mse", jit_compile=True)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert opt.norm_statistics()["steps"] == 2


def test_composes_with_loss_scale_optimizer_under_mixed_float16(jit=JIT[-1]):
    x, y = helpers.data()
    reference = helpers.mlp()
    ref_opt = GradientClipping(keras.optimizers.SGD(0.01), threshold=1.0)
    reference.compile(optimizer=ref_opt, loss="mse", jit_compile=jit)
    reference.train_on_batch(x, y)

    keras.config.set_dtype_policy("mixed_float16")
    model = helpers.mlp()
    opt = GradientClipping(keras.optimizers.SGD(0.01), threshold=1.0)
    model.compile(optimizer=opt, loss="mse", jit_compile=jit)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer is opt
    # The loss scale starts at 2 ** 15; LossScaleOptimizer skips (and never
    # passes on) the steps whose float16 gradients overflow, halving it.
    for _ in range(20):
        model.train_on_batch(x, y)
        if int(opt.step_count.numpy()):
            break
    assert int(opt.step_count.numpy()) == 1
    # The recorded norm is of the unscaled gradients of the first applied
    # step (same weights), equal to the float32 run's up to fp16 rounding.
    np.testing.assert_allclose(
        opt.gradient_norm.numpy(), ref_opt.gradient_norm.numpy(), rtol=2e-2
    )
    assert int(opt.clip_count.numpy()) == 1
    for w in model.weights:
        assert w.dtype == "float32"


def test_static_loss_scale_factor_moves_to_the_wrapper():
    x, y = helpers.data()
    ours = GradientClipping(
        keras.optimizers.SGD(0.1, loss_scale_factor=64.0), threshold=0.5
    )
    assert ours.loss_scale_factor == 64.0
    assert ours.optimizer.loss_scale_factor is None
    reference = keras.optimizers.SGD(
        0.1, loss_scale_factor=64.0, global_clipnorm=0.5
    )
    _pair_steps(ours, reference, jit=False, steps=2)
    inner = ours.get_config()["optimizer"]["config"]
    assert inner["loss_scale_factor"] == 64.0


def test_delegates_learning_rate_and_iterations():
    inner = keras.optimizers.SGD(0.1)
    opt = GradientClipping(inner)
    opt.learning_rate = 0.25
    assert float(inner.learning_rate.numpy()) == 0.25
    v = keras.Variable(np.zeros(3, "float32"))
    opt.apply([keras.ops.ones(3)], [v])
    assert int(opt.iterations.numpy()) == int(inner.iterations.numpy()) == 1


def test_threshold_set_from_outside_reaches_compiled_steps(jit=JIT[-1]):
    x, y = helpers.data()
    model = helpers.mlp()
    opt = GradientClipping(keras.optimizers.SGD(0.01), threshold=1e6)
    model.compile(optimizer=opt, loss="mse", jit_compile=jit)
    model.train_on_batch(x, y)
    assert int(opt.clip_count.numpy()) == 0
    opt.threshold = 1e-3
    model.train_on_batch(x, y)
    assert int(opt.clip_count.numpy()) == 1
    assert opt.get_config()["threshold"] == 1e-3


def test_config_round_trip():
    opt = GradientClipping(
        keras.optimizers.Adam(0.003),
        method="auto",
        percentile=25.0,
        history_size=16,
        name="clip",
    )
    config = opt.get_config()
    json.dumps(config)
    again = GradientClipping.from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(opt)
    )
    assert type(restored) is GradientClipping
    assert restored.get_config() == config
    assert isinstance(restored.optimizer, keras.optimizers.Adam)
    assert GradientClipping("sgd", method="agc").threshold == 0.01


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_compiled_model_saves_and_loads_with_its_optimizer(policy):
    keras.config.set_dtype_policy(policy)
    x, y = helpers.data()
    model = helpers.mlp()
    opt = GradientClipping(keras.optimizers.Adam(0.01), method="auto")
    model.compile(optimizer=opt, loss="mse", jit_compile=FAST_JIT)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    loaded = helpers.save_and_load(model)
    restored = loaded.optimizer
    if policy == "mixed_float16":
        assert isinstance(restored, keras.optimizers.LossScaleOptimizer)
        restored = restored.inner_optimizer
    assert type(restored) is GradientClipping
    assert restored.get_config() == opt.get_config()
    for a, b in zip(
        helpers.optimizer_values(model.optimizer),
        helpers.optimizer_values(loaded.optimizer),
    ):
        np.testing.assert_array_equal(a, b)
    count = int(opt.history_count.numpy())
    assert count >= (1 if policy == "mixed_float16" else 2)
    assert int(restored.history_count.numpy()) == count
    loaded.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert int(restored.history_count.numpy()) > count


BAD_ARGUMENTS = [
    ({"threshold": 0.0}, "`threshold`. Expected a finite number > 0"),
    ({"threshold": -1.0}, "Received: threshold=-1.0"),
    ({"threshold": float("inf")}, "Expected a finite number > 0"),
    ({"threshold": True}, "Received: threshold=True"),
    ({"percentile": float("inf")}, "`percentile`.*percentile=inf"),
    ({"epsilon": float("inf")}, "`epsilon`. Expected a finite number > 0"),
    ({"epsilon": float("nan")}, "`epsilon`.*epsilon=nan"),
    ({"history_size": True}, "`history_size`.*history_size=True"),
    ({"method": "norm"}, "`method`. Expected one of .*method='norm'"),
    ({"method": "auto", "threshold": 1.0}, "`threshold`. Expected None"),
    ({"method": "auto", "percentile": 0}, "`percentile`"),
    ({"history_size": 0}, "`history_size`. Expected an integer >= 1"),
    ({"epsilon": 0.0}, "`epsilon`"),
    ({"optimizer": 0.1}, "Expected a `keras.optimizers.Optimizer` inst"),
    ({"optimizer": "loss_scale"}, "Expected an optimizer that is not a `Lo"),
]


def test_bad_arguments_name_the_argument_and_value():
    for kwargs, match in BAD_ARGUMENTS:
        kwargs = {"optimizer": keras.optimizers.SGD(), **kwargs}
        if kwargs["optimizer"] == "loss_scale":
            kwargs["optimizer"] = keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD()
            )
        with pytest.raises(ValueError, match="Invalid value received for ar"):
            GradientClipping(**kwargs)
        with pytest.raises(ValueError, match=match) as info:
            GradientClipping(**kwargs)
        expected = str(info.value).split("Received")[0]
        assert "inf]" not in expected and "inf)" not in expected


# AGC units per layer type. The reference is timm's `unitwise_norm` and
# `adaptive_clip_grad` written in NumPy on torch layouts: each Keras weight
# is moved to the layout torch uses for the same layer, clipped there with
# one unit per entry of the first axis (the whole tensor for rank <= 1),
# and moved back.
def _to_torch(kind, w):
    if kind == "dense":  # (in, out) -> (out, in)
        return w.T
    if kind in ("conv", "transposed"):
        # (kh, kw, in, out) -> (out, in, kh, kw); transposed convolutions
        # (kh, kw, out, in) -> (in, out, kh, kw), torch's ConvTranspose.
        return np.transpose(w, (3, 2, 0, 1))
    if kind == "depthwise":  # (kh, kw, C, m) -> (C * m, 1, kh, kw)
        kh, kw, c, m = w.shape
        return np.transpose(w.reshape(kh, kw, c * m), (2, 0, 1))[:, None]
    if kind == "mha_in":  # (dim, heads, key_dim) -> in_proj (h * k, dim)
        return w.reshape(w.shape[0], -1).T
    if kind == "mha_out":  # (heads, key_dim, dim) -> out_proj (dim, h * k)
        return w.reshape(-1, w.shape[-1]).T
    if kind == "bias":  # torch biases are vectors
        return w.reshape(-1)
    assert kind == "embedding"  # (vocabulary, dim) in both
    return w


def _from_torch(kind, t, shape):
    if kind == "dense":
        return t.T
    if kind in ("conv", "transposed"):
        return np.transpose(t, (2, 3, 1, 0))
    if kind == "depthwise":
        kh, kw, c, m = shape
        return np.transpose(t[:, 0], (1, 2, 0)).reshape(shape)
    if kind == "mha_in":
        return t.T.reshape(shape)
    if kind == "mha_out":
        return t.T.reshape(shape)
    return t.reshape(shape)


def _timm_unitwise_norm(x):
    if x.ndim <= 1:
        return np.sqrt(np.sum(np.square(x)))
    axes = tuple(range(1, x.ndim))
    return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True))


def _timm_agc(kind, grad, param, factor, eps):
    g = _to_torch(kind, grad.astype("float64"))
    p = _to_torch(kind, param.astype("float64"))
    max_norm = np.maximum(_timm_unitwise_norm(p), eps) * factor
    g_norm = _timm_unitwise_norm(g)
    clipped = g * (max_norm / np.maximum(g_norm, 1e-6))
    out = np.where(g_norm < max_norm, g, clipped)
    return _from_torch(kind, out, grad.shape)


def _agc_model():
    L = keras.layers
    image = keras.Input((6, 6, 3))
    conv = L.Conv2D(4, 3, name="conv")
    depthwise = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")
    transposed = L.Conv2DTranspose(2, 2, name="tconv")
    x = L.Flatten()(transposed(depthwise(conv(image))))
    tokens = keras.Input((3,), dtype="int32")
    embedding = L.Embedding(10, 4, name="emb")
    mha = L.MultiHeadAttention(2, 3, name="mha")
    e = embedding(tokens)
    e = L.Flatten()(mha(e, e))
    dense = L.Dense(2, name="head")
    model = keras.Model([image, tokens], dense(L.Concatenate()([x, e])))
    kinds = {}
    for layer, kind in (
        (conv, "conv"),
        (depthwise, "depthwise"),
        (transposed, "transposed"),
        (embedding, "embedding"),
        (dense, "dense"),
        (mha._query_dense, "mha_in"),
        (mha._key_dense, "mha_in"),
        (mha._value_dense, "mha_in"),
        (mha._output_dense, "mha_out"),
    ):
        for v in layer.trainable_weights:
            kinds[v.path] = "bias" if v.name == "bias" else kind
    return model, kinds


def _agc_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, 6, 6, 3)).astype("float32")
    tokens = rng.integers(0, 10, size=(n, 3)).astype("int32")
    y = (3.0 * rng.normal(size=(n, 2))).astype("float32")
    return [image, tokens], y


@pytest.mark.parametrize("jit", JIT)
def test_agc_units_follow_timm_for_every_layer_type_in_fit(jit):
    factor, eps = 0.02, 1e-3
    x, y = _agc_data()
    plain, kinds = _agc_model()
    clipped, _ = _agc_model()
    clipped.set_weights(plain.get_weights())
    start = helpers.weights(plain)
    plain.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    opt = GradientClipping(
        keras.optimizers.SGD(1.0), method="agc", threshold=factor
    )
    clipped.compile(optimizer=opt, loss="mse", jit_compile=jit)
    plain.train_on_batch(x, y)
    clipped.train_on_batch(x, y)
    seen = set()
    for v, w0, raw_after, clip_after in zip(
        plain.weights, start, helpers.weights(plain), helpers.weights(clipped)
    ):
        kind = kinds[v.path]
        seen.add(kind)
        grad = w0.astype("float64") - raw_after
        expected = _timm_agc(kind, grad, w0, factor, eps)
        np.testing.assert_allclose(
            w0.astype("float64") - clip_after,
            expected,
            rtol=2e-4,
            atol=2e-6,
            err_msg=v.path,
        )
    assert seen >= {"conv", "depthwise", "embedding", "mha_in", "mha_out"}


def test_agc_keeps_a_small_gradient_depthwise_channel():
    factor, eps = 0.01, 1e-3
    model = keras.Sequential(
        [keras.Input((5, 5, 3)), keras.layers.DepthwiseConv2D(3)]
    )
    (kernel, bias) = model.trainable_variables
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 3, 3, 1)).astype("float32")
    kernel.assign(w0)
    grad = rng.normal(size=w0.shape).astype("float32")
    grad[..., 0, :] *= 1e-3  # channel 0: far under its limit
    opt = GradientClipping(
        keras.optimizers.SGD(1.0), method="agc", threshold=factor
    )
    opt.set_units_from(model)
    opt.apply(
        [keras.ops.convert_to_tensor(grad), keras.ops.zeros((3,))],
        [kernel, bias],
    )
    applied = w0 - harness.to_numpy(kernel)
    expected = _timm_agc("depthwise", grad, w0, factor, eps)
    np.testing.assert_allclose(applied, expected, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(
        applied[..., 0, :], grad[..., 0, :], rtol=1e-4, atol=1e-9
    )  # kept, as timm keeps it
    assert not np.allclose(applied[..., 1:, :], grad[..., 1:, :])


def test_agc_clips_embedding_rows_not_columns():
    factor = 0.1
    model = keras.Sequential(
        [keras.Input((2,), dtype="int32"), keras.layers.Embedding(4, 3)]
    )
    (table,) = model.trainable_variables
    table.assign(np.ones((4, 3), "float32"))  # every row norm sqrt(3)
    grad = np.zeros((4, 3), "float32")
    grad[0] = 10.0  # row 0: over its limit 0.1 * sqrt(3)
    grad[1] = 0.01  # row 1: under it
    opt = GradientClipping(
        keras.optimizers.SGD(1.0), method="agc", threshold=factor
    )
    opt.set_units_from(model)
    opt.apply([keras.ops.convert_to_tensor(grad)], [table])
    applied = 1.0 - harness.to_numpy(table)
    np.testing.assert_allclose(
        np.linalg.norm(applied[0]), factor * np.sqrt(3), rtol=1e-5
    )
    np.testing.assert_allclose(applied[1], grad[1], rtol=1e-5)
    np.testing.assert_array_equal(applied[2:], 0.0)


def test_agc_without_a_model_in_reach_warns_about_ambiguous_kernels():
    kernel = keras.Variable(np.ones((3, 3, 2, 4), "float32"), name="kernel")
    opt = GradientClipping(keras.optimizers.SGD(1.0), method="agc")
    with pytest.warns(UserWarning, match="set_units_from"):
        _build_out_of_reach(opt, kernel)
    with pytest.raises(ValueError, match="argument `model`.*model='m'"):
        opt.set_units_from("m")


def _build_out_of_reach(opt, kernel):
    # No local here holds a layer that owns `kernel`.
    opt.build([kernel])


def test_threshold_setter_refuses_none_and_keeps_the_old_value():
    opt = GradientClipping(keras.optimizers.SGD(), threshold=2.0)
    for value in (None, 0.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="argument `threshold`"):
            opt.threshold = value
        assert opt.threshold == 2.0
        assert float(opt.threshold_variable.numpy()) == 2.0
