"""The shared layer contract every layer test calls, plus small test helpers.

Run on the active backend only (one backend per process). Assertions are
invariants and statistics, never golden random values.
"""

import json
import os
import tempfile

import keras
import numpy as np
from keras import ops

BACKEND = keras.backend.backend()
BATCH = 4


def to_numpy(x):
    return ops.convert_to_numpy(x)


def _as_list(shape):
    return list(shape) if isinstance(shape, list) else [shape]


def random_inputs(input_shape, batch=BATCH, seed=0, dtype="float32"):
    """Random float inputs for one shape (a tuple) or several (a list)."""
    rng = np.random.default_rng(seed)
    arrays = [
        rng.normal(size=(batch,) + tuple(s)).astype(dtype)
        for s in _as_list(input_shape)
    ]
    return arrays if isinstance(input_shape, list) else arrays[0]


def _make(cls, init_kwargs, **overrides):
    kwargs = init_kwargs() if callable(init_kwargs) else dict(init_kwargs)
    kwargs.update(overrides)
    return cls(**kwargs)


def _identity(outputs):
    return outputs


def _model(layer, input_shape, select=_identity):
    inputs = [keras.Input(s) for s in _as_list(input_shape)]
    if not isinstance(input_shape, list):
        inputs = inputs[0]
    # A trainable head so `fit` has something to update on every layer.
    out = keras.layers.Dense(1)(keras.layers.Flatten()(select(layer(inputs))))
    return keras.Model(inputs, out)


def _fit_once(model, input_shape, jit_compile):
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    x = random_inputs(input_shape, batch=2 * BATCH)
    y = np.zeros((2 * BATCH, 1), "float32")
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss), f"non-finite loss {loss} (jit={jit_compile})"


def data_errors():
    """What a bad data value (a class id out of range) may raise.

    Eager code raises `ValueError`; a TensorFlow graph can only raise
    `InvalidArgumentError`, which carries the same message.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return (ValueError, tf.errors.InvalidArgumentError)
    return (ValueError,)


def assert_error_names_value(error, name, value):
    """The error names `name` and shows `value` (eager or graph format)."""
    text = str(error)
    assert f"{name}={value}" in text or f"{name}=] [{value}]" in text, text


class AlwaysTraining(keras.Model):
    """Calls a layer with `training=True` inside compiled predict steps."""

    def __init__(self, layer):
        super().__init__(name="always_training")
        self.inner = layer

    def call(self, inputs):
        return self.inner(inputs, training=True)


def jit_modes():
    """`jit_compile` values to test; torch.compile runs in slow tests."""
    return [False] if BACKEND == "torch" else [False, True]


def assert_layer_contract(
    cls,
    init_kwargs,
    input_shape,
    *,
    inference=None,
    output_shape=None,
    seeded=True,
    select=None,
):
    """Checks the contract shared by every keras_regularize layer.

    Args:
        cls: The layer class.
        init_kwargs: Dict of constructor arguments, or a zero-argument
            callable returning one (for layers that wrap a fresh block).
        input_shape: Shape without the batch axis, or a list of them.
        inference: Optional `f(inputs) -> expected` at `training=False`;
            defaults to the identity (first input for lists).
        output_shape: Shape without the batch axis; defaults to the input's.
        seeded: Whether the layer draws random numbers (checks seeding).
        select: Optional `f(outputs) -> tensor` picking the tensor to check
            from a layer that returns a structure (the mixing layers return
            `(images, labels)`); defaults to the identity.
    """
    select = select or _identity
    first = _as_list(input_shape)[0]
    output_shape = tuple(first if output_shape is None else output_shape)

    # 1. Config round trip through JSON, and serialize/deserialize.
    layer = _make(cls, init_kwargs)
    config = layer.get_config()
    json.dumps(config)
    assert cls.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is cls and restored.get_config() == config

    # 2. Symbolic call with a None batch dimension.
    symbolic = [keras.Input(s) for s in _as_list(input_shape)]
    out = select(
        _make(cls, init_kwargs)(
            symbolic if isinstance(input_shape, list) else symbolic[0]
        )
    )
    assert tuple(out.shape) == (None,) + output_shape, out.shape

    # 3. Inference behaviour.
    x = random_inputs(input_shape)
    layer = _make(cls, init_kwargs)
    got = to_numpy(select(layer(x, training=False)))
    if inference is None:
        expected = _as_list(x)[0]
    else:
        expected = to_numpy(inference(layer, x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    # 4. Same seed -> same outputs; different seeds -> different outputs.
    # Several calls each, so one-decision-per-batch layers differ too.
    if seeded:
        big = random_inputs(input_shape, batch=32)

        def draws(seed):
            keras.utils.set_random_seed(1234)  # same wrapped-block weights
            layer = _make(cls, init_kwargs, seed=seed)
            return np.stack(
                [to_numpy(select(layer(big, training=True))) for _ in range(16)]
            )

        a, b, c = draws(7), draws(7), draws(8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), "different seeds gave equal outputs"

    # 5. One training step, eager and compiled.
    for jit in jit_modes():
        _fit_once(
            _model(_make(cls, init_kwargs), input_shape, select),
            input_shape,
            jit,
        )

    # 6. Mixed precision: compute dtype out, float32 variables, and fit.
    for policy in ("mixed_float16", "mixed_bfloat16"):
        compute = policy.split("_")[1]
        layer = _make(cls, init_kwargs, dtype=policy)
        for training in (False, True):
            y = select(layer(random_inputs(input_shape), training=training))
            assert ops.dtype(y) == compute, (policy, ops.dtype(y))
        for w in layer.weights:
            assert w.dtype in ("float32", "int32", "int64", "uint32"), w
        keras.config.set_dtype_policy(policy)
        try:
            _fit_once(
                _model(_make(cls, init_kwargs), input_shape, select),
                input_shape,
                jit_modes()[-1],
            )
        finally:
            keras.config.set_dtype_policy("float32")

    # 7. `.keras` round trip with no custom_objects.
    model = _model(_make(cls, init_kwargs), input_shape, select)
    x = random_inputs(input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded.predict(x, verbose=0)),
        to_numpy(model.predict(x, verbose=0)),
        rtol=1e-6,
        atol=1e-6,
    )
    return loaded


def gradient(fn, x):
    """d sum(fn(x)) / dx on the active backend (tests only)."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda t: fn(t).sum())(x))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        t = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            total = tf.reduce_sum(fn(t))
        return tape.gradient(total, t).numpy()
    import torch

    t = torch.tensor(x, requires_grad=True)
    fn(t).sum().backward()
    return t.grad.numpy()


def binomial_ok(count, n, p, sigmas=4.0):
    """Whether `count` successes of `n` is within `sigmas` SDs of `n * p`."""
    sd = np.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * max(sd, 1e-12)


class ScriptedMonitor(keras.callbacks.Callback):
    """Writes scripted values into the logs and records each epoch's weights.

    Place it before the callback under test, which then sees `values[e]`
    under `monitor` at the end of epoch `e`; `weights[e]` are the model's
    host weights at that moment. With `raise_at=e` it raises
    `KeyboardInterrupt` at the end of epoch `e`, after scripting it.
    """

    def __init__(self, values, monitor="val_loss", raise_at=None):
        super().__init__()
        self.values = values
        self.monitor = monitor
        self.raise_at = raise_at
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([np.array(w) for w in self.model.get_weights()])
        logs[self.monitor] = self.values[epoch]
        if epoch == self.raise_at:
            raise KeyboardInterrupt
