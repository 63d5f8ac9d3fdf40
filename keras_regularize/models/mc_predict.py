"""Monte Carlo dropout prediction with batch normalization left in inference.

Paper: Dropout as a Bayesian Approximation: Representing Model Uncertainty in
Deep Learning (https://arxiv.org/abs/1506.02142).
"""

import collections.abc
import math
import typing

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize.layers.mc_dropout import MCDropout

STRATEGIES = ("auto", "tile", "tile_inputs", "loop")

# `strategy="auto"` is "tile" on every backend (the fastest measured in
# bench/mc_dropout_bench.py); rows per pass come from
# `_backend.mc_rows_per_pass()`, measured by the same benchmark.

_CACHE_ATTRIBUTE = "_keras_regularize_mc_cache"


class MCPrediction(typing.NamedTuple):
    """What `mc_predict` returns: NumPy arrays, one row per input.

    Attributes:
        mean: `(N, ...)` predictive mean, the average of the sampled
            outputs (of their softmax/sigmoid with `from_logits=True`).
        variance: `(N, ...)` variance of the sampled outputs around `mean`
            (population variance, divided by `samples`).
        entropy: `(N, ...)` predictive entropy `H[mean]` in nats, summed
            over the last (class) axis; total uncertainty.
        mutual_information: `(N, ...)` `H[mean] - mean_s H[p_s]` in nats,
            clipped at 0; the epistemic (model) part of the uncertainty.
        samples: `(samples, N, ...)` the sampled outputs when
            `return_samples=True`, else `None`.
    """

    mean: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    samples: np.ndarray | None = None


def walk_layers(root):
    """Yields `root` and every layer reachable through its attributes."""
    seen = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, keras.layers.Layer):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            yield obj
            children = list(vars(obj).values())
            if isinstance(obj, keras.Model):
                children += list(obj.layers)
            stack.extend(reversed(children))
        elif isinstance(obj, collections.abc.Mapping):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)


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


class _Cache:
    """Compiled forward wrappers of one model (a plain object: not saved)."""

    def __init__(self):
        self.forwards = {}


def _forward(model, samples, from_logits, return_samples, strategy):
    """The cached `_MCForward` for these settings, and the strategy used."""
    cache = getattr(model, _CACHE_ATTRIBUTE, None)
    if not isinstance(cache, _Cache):
        cache = _Cache()
        # Plain attribute, outside Keras tracking: `.keras` files and
        # `model.weights` never see it.
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    key = (samples, bool(from_logits), bool(return_samples), strategy)
    if key not in cache.forwards:
        inner, tile = model, True
        if strategy == "tile" and samples > 1:
            graph = _share_prefix(model, samples)
            if graph is not None:
                inner, tile = graph, False
        cache.forwards[key] = _MCForward(
            inner, samples, from_logits, return_samples, tile
        )
    return cache.forwards[key]


def _num_rows(x):
    leaves = keras.tree.flatten(x)
    if not leaves or not hasattr(leaves[0], "shape"):
        raise ValueError(
            "Invalid value received for argument `x`. Expected an array or "
            f"a structure of arrays. Received: x={type(x)}"
        )
    return int(leaves[0].shape[0])


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


def _concat(parts):
    # Statistics are per input (axis 0); samples are `(samples, N, ...)`.
    return {
        k: np.concatenate([p[k] for p in parts], axis=int(k == "samples"))
        for k in parts[0]
    }


@export("keras_regularize.models.mc_predict")
def mc_predict(
    model,
    x,
    samples=30,
    batch_size=None,
    from_logits=False,
    return_samples=False,
    strategy="auto",
):
    """Monte Carlo dropout predictions: mean, variance and uncertainty.

    Draws `samples` stochastic predictions for every input from a model
    whose dropout stays active at inference (`MCDropout` layers, e.g. from
    `with_mc_dropout`). The model always runs with `training=False`: batch
    normalization uses its moving statistics and never updates them, unlike
    the usual `model(x, training=True)` loop, which normalizes with batch
    statistics and moves the moving averages on every call.

    The samples are vectorized and run inside a compiled predict function
    (XLA on JAX and TensorFlow), with the statistics reduced on the device:

    - `strategy="tile"`: a Sequential or Functional model is rebuilt over
      its own layers (nothing copied) so that every tensor that does not
      depend on a stochastic layer is computed once per input and tiled
      `samples` times only where randomness starts. A network whose dropout
      sits after its first layers, or in its head, runs that deterministic
      prefix once instead of `samples` times. Other models fall back to
      `"tile_inputs"`.
    - `strategy="tile_inputs"`: each chunk of inputs is tiled `samples`
      times and the whole model runs once over the tiled batch.
    - `strategy="loop"`: the compiled function runs `samples` times per
      chunk. It is used whenever a dropout layer shares one mask over the
      batch (`noise_shape` with batch size 1), since tiled copies of an
      input would then share their masks.
    - `strategy="auto"` (the default) picks per backend from the
      measurements in `bench/mc_dropout_bench.py`.

    All strategies assume layers treat batch rows independently at
    inference, as Keras layers do.

    Outputs are read as class probabilities along the last axis (logits with
    `from_logits=True`; a last axis of size 1 is a Bernoulli probability)
    for the entropy and mutual information; for regression outputs only
    `mean` and `variance` are meaningful.

    Args:
        model: A Keras model (or layer) with a single output tensor and at
            least one `MCDropout` layer with a non-zero rate.
        x: Input array, or the structure of arrays the model takes; axis 0
            indexes the inputs.
        samples: Int >= 1. Stochastic predictions per input. Defaults to
            `30`.
        batch_size: Optional int >= 1, inputs per chunk; a forward pass
            then holds at most `batch_size * samples` rows, which bounds
            memory (the `"loop"` strategy holds `batch_size` rows).
            Defaults to `ceil(rows / samples)` with `rows` 1,024 on JAX and
            4,096 on TensorFlow and torch (`_backend.MC_ROWS_PER_PASS`).
        from_logits: Python bool. Whether the model outputs logits, turned into
            probabilities (softmax, or sigmoid for one unit) before
            averaging. Defaults to `False`.
        return_samples: Python bool. Whether to return the sampled outputs too.
            Defaults to `False`.
        strategy: `"auto"`, `"tile"`, `"tile_inputs"` or `"loop"`, as
            above. Defaults to `"auto"`.

    Returns:
        An `MCPrediction` named tuple of NumPy arrays: `mean`, `variance`
        (both shaped like one prediction), `entropy` and
        `mutual_information` (the class axis reduced, in nats), and
        `samples` (`(samples, N, ...)` or `None`). An input with 0 rows
        gives results with 0 rows (`N = 0`).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"),
    ...     keras_regularize.layers.MCDropout(0.5, seed=0),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> result = keras_regularize.models.mc_predict(
    ...     model, np.ones((5, 4), "float32"), samples=10)
    >>> result.mean.shape, result.variance.shape, result.entropy.shape
    ((5, 3), (5, 3), (5,))
    >>> bool((result.mutual_information >= 0).all())
    True

    References:
        - [Gal and Ghahramani, 2016](https://arxiv.org/abs/1506.02142)
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a Keras "
            f"model or layer. Received: model={model!r}"
        )
    samples = check_int("samples", samples, 1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    from_logits = check_bool("from_logits", from_logits)
    return_samples = check_bool("return_samples", return_samples)
    strategy = check_choice("strategy", strategy, STRATEGIES)
    stochastic = stochastic_layers(model)
    if not stochastic:
        raise ValueError(
            f"`mc_predict` needs a stochastic model, but model "
            f"'{model.name}' has no `MCDropout` layer with a rate above 0, "
            "so every sample would be identical and the variance zero. "
            "Build it with `keras_regularize.layers.MCDropout`, or convert "
            "its Dropout layers with "
            "`keras_regularize.models.with_mc_dropout(model)`."
        )
    if any(layer.shares_mask_over_batch() for layer in stochastic):
        strategy = "loop"
    elif strategy == "auto":
        strategy = "tile"
    if batch_size is None:
        rows = _backend.mc_rows_per_pass()
        batch_size = max(1, math.ceil(rows / samples))

    n = _num_rows(x)
    if n == 0:
        return _empty_prediction(
            model, x, samples, batch_size, from_logits, return_samples, strategy
        )
    parts = []
    if strategy in ("tile", "tile_inputs") and samples > 1:
        forward = _forward(
            model, samples, from_logits, return_samples, strategy
        )
        for chunk, rows in _chunks(x, n, batch_size):
            out = forward.predict_on_batch(chunk)
            parts.append(_first_rows(out, rows))
    else:
        forward = _forward(model, 1, from_logits, False, "loop")
        for chunk, rows in _chunks(x, n, batch_size):
            probs = np.stack(
                [forward.predict_on_batch(chunk) for _ in range(samples)]
            )
            parts.append(_host_statistics(probs[:, :rows], return_samples))
    return MCPrediction(**_concat(parts))


def _empty_prediction(
    model, x, samples, batch_size, from_logits, return_samples, strategy
):
    """Results with 0 rows, shaped and typed as for any other input.

    One pass over a single all-zeros input gives the shapes and dtypes of
    every result; its row is then dropped. (The forward pass cannot run on
    the empty batch itself: reshaping `samples * 0` rows into
    `(samples, -1, ...)` is ambiguous.)
    """

    def one_row(t):
        return np.zeros((1,) + tuple(t.shape[1:]), ops.dtype(t))

    result = mc_predict(
        model,
        keras.tree.map_structure(one_row, x),
        samples=samples,
        batch_size=batch_size,
        from_logits=from_logits,
        return_samples=return_samples,
        strategy=strategy,
    )
    return MCPrediction(
        **{
            k: None if v is None else v[:, :0] if k == "samples" else v[:0]
            for k, v in result._asdict().items()
        }
    )


def _first_rows(out, rows):
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
