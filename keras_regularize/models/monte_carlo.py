"""Monte Carlo dropout: convert a model, predict with uncertainty.

`with_mc_dropout` turns a trained model's dropout layers into `MCDropout`;
`mc_predict` samples such a model with batch normalization left in
inference and returns an `MCPrediction`.

Paper: Dropout as a Bayesian Approximation: Representing Model Uncertainty in
Deep Learning (https://arxiv.org/abs/1506.02142).
"""

import math
import typing

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend
from keras_regularize._export import export
from keras_regularize._layer_walk import walk_layers
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import fail
from keras_regularize.layers.mc_dropout import MCDropout
from keras_regularize.models import _tiled_forward

STRATEGIES = ("auto", "tile", "tile_inputs", "loop")


@export("keras_regularize.models.MCPrediction")
class MCPrediction(typing.NamedTuple):
    """What `mc_predict` returns: NumPy arrays, one row per input.

    A named tuple: read its fields by name (`result.mean`), or unpack it
    (`mean, variance, entropy, mutual_information, samples = result`).

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


def _num_rows(x):
    leaves = keras.tree.flatten(x)
    if not leaves or not hasattr(leaves[0], "shape"):
        fail("x", "an array or a structure of arrays", type(x))
    return int(leaves[0].shape[0])


def _zero_row(t):
    return np.zeros((1,) + tuple(t.shape[1:]), ops.dtype(t))


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
    - `strategy="auto"` (the default) is `"tile"`, the fastest on every
      backend in `bench/mc_dropout_bench.py`.

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
            4,096 on TensorFlow and torch, the fastest sizes measured by
            `bench/mc_dropout_bench.py`.
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
    >>> x = np.ones((5, 4), "float32")
    >>> result = keras_regularize.models.mc_predict(model, x, samples=10)
    >>> result.mean.shape  # one averaged prediction per input
    (5, 3)
    >>> result.mean.sum(axis=-1).round(3)  # still class probabilities
    array([1., 1., 1., 1., 1.], dtype=float32)
    >>> result.mutual_information.shape  # the model's own uncertainty
    (5,)

    References:
        - [Gal and Ghahramani, 2016](https://arxiv.org/abs/1506.02142)
    """
    if not isinstance(model, keras.layers.Layer):
        fail("model", "a Keras model or layer", model)
    samples = check_int("samples", samples, 1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
    from_logits = check_bool("from_logits", from_logits)
    return_samples = check_bool("return_samples", return_samples)
    strategy = check_choice("strategy", strategy, STRATEGIES)
    stochastic = _tiled_forward.stochastic_layers(model)
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
        # One all-zeros input gives every result its shape and dtype; its
        # row is then dropped. (The forward pass cannot run on the empty
        # batch: `samples * 0` rows reshaped to `(samples, -1, ...)` is
        # ambiguous.)
        x = keras.tree.map_structure(_zero_row, x)
    out = _tiled_forward.run(
        model,
        x,
        max(n, 1),
        samples,
        batch_size,
        from_logits,
        return_samples,
        strategy,
    )
    return MCPrediction(**_tiled_forward.first_rows(out, n))


# Mask shapes of Keras's spatial dropouts: one decision per sample and
# channel, shared over the spatial axes.
_SPATIAL_RANK = {
    keras.layers.SpatialDropout1D: 1,
    keras.layers.SpatialDropout2D: 2,
    keras.layers.SpatialDropout3D: 3,
}


def _spatial_noise_shape(layer):
    spatial = (1,) * _SPATIAL_RANK[type(layer)]
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format == "channels_first":
        return (None, None) + spatial
    return (None,) + spatial + (None,)


def _convert(layer):
    """An `MCDropout` equivalent to a Keras dropout layer, or `None`."""
    if type(layer) in _SPATIAL_RANK:
        noise_shape = _spatial_noise_shape(layer)
    elif type(layer) is keras.layers.Dropout:
        noise_shape = layer.noise_shape
    else:
        return None
    return MCDropout(
        layer.rate,
        noise_shape=noise_shape,
        seed=layer.seed,
        name=layer.name,
        dtype=layer.dtype_policy,
    )


# Keras dropout layers that stay inactive at inference unless converted.
_UNCONVERTED = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    *_SPATIAL_RANK,
)


def _refuse_model(model):
    fail(
        "model",
        "a Sequential or Functional `keras.Model` (subclassed models cannot "
        "be rebuilt; use `keras_regularize.layers.MCDropout` in their "
        "definition)",
        model,
    )


@export("keras_regularize.models.with_mc_dropout")
def with_mc_dropout(model, share_weights=True):
    """Returns a copy of `model` whose dropout stays active at inference.

    Every `keras.layers.Dropout`, `SpatialDropout1D`, `SpatialDropout2D` and
    `SpatialDropout3D` layer, also inside nested Sequential or Functional
    models, is replaced by a `keras_regularize.layers.MCDropout` with the
    same rate, mask shape, seed and name. All other layers are reused as
    they are (`share_weights=True`, the default): the new model holds the
    very same variables, so training either model updates both, and
    nothing is copied. With `share_weights=False` every layer is cloned and
    its weights copied, so the two models are independent afterwards.

    The returned model is meant for `keras_regularize.models.mc_predict`,
    which runs it with `training=False` (batch normalization in inference
    mode) while the converted dropout layers keep sampling. The input model
    is not modified: plain `model.predict` stays deterministic.

    Only Sequential and Functional models can be rebuilt. A dropout layer
    that the rebuild cannot reach (one held inside a custom layer, or a
    `GaussianDropout`/`AlphaDropout`, which are not converted) raises an
    error naming it rather than being left silently deterministic.

    Args:
        model: A Sequential or Functional `keras.Model`.
        share_weights: Python bool. Whether the new model reuses the
            layers (and so the variables) of `model` rather than copies.
            Defaults to `True`.

    Returns:
        A new `keras.Model` of the same kind as `model`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"),
    ...     keras.layers.Dropout(0.5),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> mc_model = keras_regularize.models.with_mc_dropout(model)
    >>> [type(layer).__name__ for layer in mc_model.layers]
    ['Dense', 'MCDropout', 'Dense']
    >>> mc_model.layers[0] is model.layers[0]  # the trained weights, shared
    True

    References:
        - [Gal and Ghahramani, 2016](https://arxiv.org/abs/1506.02142)
    """
    if not isinstance(model, keras.Model):
        _refuse_model(model)
    share_weights = check_bool("share_weights", share_weights)
    copies = []

    def clone_function(layer):
        converted = _convert(layer)
        if converted is not None:
            return converted
        if share_weights:
            return layer
        clone = layer.__class__.from_config(layer.get_config())
        copies.append((layer, clone))
        return clone

    try:
        new_model = keras.models.clone_model(
            model, clone_function=clone_function, recursive=True
        )
    except ValueError as error:
        # clone_model refuses `clone_function` for subclassed models.
        if "clone_function" not in str(error):
            raise
        _refuse_model(model)
    for original, clone in copies:
        # Cloned layers were built when the new graph was traced.
        clone.set_weights(original.get_weights())

    leftover = [
        f"'{layer.name}' ({type(layer).__name__})"
        for layer in walk_layers(new_model)
        if type(layer) in _UNCONVERTED
    ]
    if leftover:
        raise ValueError(
            "`with_mc_dropout` could not convert these dropout layers, "
            "which would stay inactive at inference: "
            + ", ".join(leftover)
            + ". Only Dropout and SpatialDropout layers directly inside "
            "Sequential or Functional models are converted; use "
            "`keras_regularize.layers.MCDropout` inside custom layers."
        )
    return new_model
