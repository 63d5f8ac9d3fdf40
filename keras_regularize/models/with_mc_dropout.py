"""Turns the dropout layers of a trained model into Monte Carlo dropout."""

import keras

from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize.layers.mc_dropout import MCDropout
from keras_regularize.models.mc_predict import walk_layers

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


def _bad_model(model):
    return ValueError(
        "Invalid value received for argument `model`. Expected a "
        "Sequential or Functional `keras.Model` (subclassed models cannot "
        "be rebuilt; use `keras_regularize.layers.MCDropout` in their "
        f"definition). Received: model={model!r}"
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
    ...     keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5)
    ... ])
    >>> mc = keras_regularize.models.with_mc_dropout(model)
    >>> type(mc.layers[-1]).__name__, mc.layers[0] is model.layers[0]
    ('MCDropout', True)

    References:
        - [Gal and Ghahramani, 2016](https://arxiv.org/abs/1506.02142)
    """
    if not isinstance(model, keras.Model):
        raise _bad_model(model)
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
        raise _bad_model(model) from error
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
