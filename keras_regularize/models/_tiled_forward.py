"""The compiled forward passes behind `mc_predict`.

Each chunk of inputs runs as one compiled predict step holding all of its
samples (the model tiled over rows), or, for masks shared over the batch,
as one step per sample. The statistics are reduced on the device.
"""

import keras
import numpy as np
from keras import ops

from keras_regularize._layer_walk import PRIVATE_ATTRIBUTE_PREFIX
from keras_regularize._layer_walk import walk_layers
from keras_regularize.layers.mc_dropout import MCDropout

# A plain attribute of the model, outside Keras tracking: `.keras` files and
# `model.weights` never see it, nor does the layer walk (its prefix).
_CACHE_ATTRIBUTE = PRIVATE_ATTRIBUTE_PREFIX + "mc_forwards"


def stochastic_layers(model):
    """The `MCDropout` layers of `model` with a non-zero rate."""
    return [
        layer
        for layer in walk_layers(model)
        if isinstance(layer, MCDropout) and layer.rate > 0.0
    ]


def _probabilities(y, from_logits):
    y = ops.cast(y, "float32")
    if not from_logits:
        return y
    if y.shape[-1] == 1:
        return ops.sigmoid(y)
    return ops.softmax(y, axis=-1)


def _entropy(p):
    """Entropy in nats over the last axis; one unit means Bernoulli(p)."""
    if p.shape[-1] == 1:
        p = ops.concatenate([1.0 - p, p], axis=-1)
    safe = ops.where(p > 0.0, p, ops.ones_like(p))
    return -ops.sum(p * ops.log(safe), axis=-1)


def statistics(probs):
    """Mean, variance, entropy and mutual information over axis 0."""
    mean = ops.mean(probs, axis=0)
    variance = ops.mean(ops.square(probs - mean[None]), axis=0)
    entropy = _entropy(mean)
    expected = ops.mean(_entropy(probs), axis=0)
    mutual = ops.maximum(entropy - expected, 0.0)
    return {
        "mean": mean,
        "variance": variance,
        "entropy": entropy,
        "mutual_information": mutual,
    }


def _tile(x, samples):
    # Row s * B + b of the result is input b, for sample s.
    return ops.tile(x, (samples,) + (1,) * (len(x.shape) - 1))


class _Tile(keras.layers.Layer):
    """Repeats a batch `samples` times along axis 0 (masks too)."""

    def __init__(self, samples, **kwargs):
        super().__init__(**kwargs)
        self.samples = samples
        self.supports_masking = True

    def call(self, inputs):
        return _tile(inputs, self.samples)

    def compute_mask(self, inputs, mask=None):
        return None if mask is None else _tile(mask, self.samples)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        batch = None if batch is None else batch * self.samples
        return (batch,) + tuple(input_shape[1:])


def _share_prefix(model, samples):
    """`model` rebuilt to tile its tensors where randomness starts.

    Returns a Functional model over the same layers (shared, nothing is
    copied) in which every tensor that does not depend on a stochastic layer
    is computed once per input, and is tiled `samples` times only where it
    feeds a stochastic layer or meets a tiled tensor. A network whose
    dropout sits in its head thus runs its backbone once, not `samples`
    times. Returns `None` when `model` is not a Sequential or Functional
    model, or when its output does not depend on a stochastic layer.
    """
    stochastic = {id(layer) for layer in stochastic_layers(model)}
    tiled = {}  # id(base tensor) -> its tiled version
    expanded = set()  # ids of tensors with `samples * B` rows

    def is_stochastic(layer):
        return any(id(sub) in stochastic for sub in walk_layers(layer))

    def expand(t):
        if not isinstance(t, keras.KerasTensor) or id(t) in expanded:
            return t
        if id(t) not in tiled:
            tiled[id(t)] = _Tile(samples)(t)
            expanded.add(id(tiled[id(t)]))
        return tiled[id(t)]

    def call_function(layer, *args, **kwargs):
        leaves = keras.tree.flatten((args, kwargs))
        if is_stochastic(layer) or any(id(t) in expanded for t in leaves):
            args, kwargs = keras.tree.map_structure(expand, (args, kwargs))
            outputs = layer(*args, **kwargs)
            expanded.update(id(t) for t in keras.tree.flatten(outputs))
            return outputs
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        inputs = getattr(model, "inputs", None)
        if not inputs or len(inputs) != 1:
            return None
        x = new_inputs = keras.Input(
            batch_shape=inputs[0].shape, dtype=inputs[0].dtype
        )
        for layer in model.layers:
            x = call_function(layer, x)
        graph = keras.Model(new_inputs, x)
    else:
        try:
            graph = keras.models.clone_model(
                model,
                clone_function=lambda layer: layer,
                call_function=call_function,
            )
        except ValueError:
            return None  # subclassed models: tile the inputs instead
    outputs = keras.tree.flatten(graph.outputs)
    if len(outputs) != 1 or id(outputs[0]) not in expanded:
        return None
    return graph


class _MCForward(keras.Model):
    """`samples` stochastic passes of `inner` as one compiled predict step.

    `inner` runs with `training=False`, so batch normalization uses (and
    keeps) its moving statistics; only `MCDropout` layers are random. With
    `tile_inputs=True` the inputs are tiled `samples` times; otherwise
    `inner` tiles internally (see `_share_prefix`).
    """

    def __init__(self, inner, samples, from_logits, return_samples, tile):
        super().__init__(name="mc_predict_forward")
        self.inner = inner
        self.samples = samples
        self.from_logits = from_logits
        self.return_samples = return_samples
        self.tile_inputs = tile

    def call(self, x, training=False):
        if self.tile_inputs and self.samples > 1:
            x = keras.tree.map_structure(lambda t: _tile(t, self.samples), x)
        y = self.inner(x, training=False)
        if not isinstance(y, keras.KerasTensor) and not ops.is_tensor(y):
            raise ValueError(
                "Invalid model received by `mc_predict`. Expected a model "
                f"with a single output tensor. Received outputs: {type(y)}"
            )
        probs = _probabilities(y, self.from_logits)
        if self.samples == 1:
            return probs
        shape = ops.shape(probs)
        probs = ops.reshape(probs, (self.samples, -1) + tuple(shape[1:]))
        out = statistics(probs)
        if self.return_samples:
            out["samples"] = probs
        return out


def _forward(model, samples, from_logits, return_samples, strategy):
    """The cached `_MCForward` of `model` for these settings."""
    cache = vars(model).get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    key = (samples, from_logits, return_samples, strategy)
    if key not in cache:
        inner, tile = model, True
        if strategy == "tile" and samples > 1:
            graph = _share_prefix(model, samples)
            if graph is not None:
                inner, tile = graph, False
        cache[key] = _MCForward(
            inner, samples, from_logits, return_samples, tile
        )
    return cache[key]


def _chunks(x, n, batch_size):
    """Yields `(chunk, rows)`; a short last chunk is padded to `batch_size`.

    Padding (repeating the last input) keeps one input shape per call, so
    compiled predict functions are traced once rather than once more for
    the remainder.
    """
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        if rows == batch_size or start == 0:
            stop = start + rows
            chunk = keras.tree.map_structure(
                lambda t, a=start, b=stop: t[a:b], x
            )
        else:
            index = np.minimum(np.arange(start, start + batch_size), n - 1)
            chunk = keras.tree.map_structure(
                lambda t, i=index: ops.take(t, i, axis=0), x
            )
        yield chunk, rows


def first_rows(out, rows):
    """The results of the first `rows` inputs (samples are axis 1)."""
    return {
        k: v[:, :rows] if k == "samples" else v[:rows] for k, v in out.items()
    }


def _host_statistics(probs, return_samples):
    out = {
        k: ops.convert_to_numpy(v)
        for k, v in statistics(ops.convert_to_tensor(probs)).items()
    }
    if return_samples:
        out["samples"] = probs
    return out


def run(
    model, x, n, samples, batch_size, from_logits, return_samples, strategy
):
    """The statistics of `samples` passes over the `n` inputs of `x`.

    `strategy` is `"tile"`, `"tile_inputs"` or `"loop"`; a forward pass
    holds at most `batch_size * samples` rows (`batch_size` for `"loop"`).
    Returns a dict of NumPy arrays, one row per input (`"samples"`, when
    returned, is `(samples, n, ...)`).
    """
    parts = []
    if strategy in ("tile", "tile_inputs") and samples > 1:
        forward = _forward(
            model, samples, from_logits, return_samples, strategy
        )
        for chunk, rows in _chunks(x, n, batch_size):
            out = forward.predict_on_batch(chunk)
            parts.append(first_rows(out, rows))
    else:
        forward = _forward(model, 1, from_logits, False, "loop")
        for chunk, rows in _chunks(x, n, batch_size):
            probs = np.stack(
                [forward.predict_on_batch(chunk) for _ in range(samples)]
            )
            parts.append(_host_statistics(probs[:, :rows], return_samples))
    # Statistics are per input (axis 0); samples are `(samples, N, ...)`.
    return {
        k: np.concatenate([p[k] for p in parts], axis=int(k == "samples"))
        for k in parts[0]
    }
