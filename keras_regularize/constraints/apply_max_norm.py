"""Attach a layout-aware max-norm constraint to every kernel of a model."""

import warnings

import keras

from keras_regularize._export import export
from keras_regularize._validation import check_number
from keras_regularize.constraints.max_norm import MaxNorm

L = keras.layers

# (layer types, [(constraint attribute, variable attribute, norm axes)]),
# checked in order. Norm axes are those reduced for one unit; `None` means
# all but the last. Kernel layouts in Keras 3 (any `data_format`):
#   Conv*D            (*spatial, in, out)         unit = one output filter
#   Conv*DTranspose   (*spatial, out, in)         unit = one output filter
#   DepthwiseConv*D   (*spatial, in, multiplier)  unit = one (channel,
#                     multiplier) output, fed by a spatial window only
#   SeparableConv*D   depthwise as above, pointwise (1.., in * m, out)
#   Embedding         (vocabulary, dim)           unit = one row
_RULES = (
    ((L.Conv1DTranspose,), [("kernel_constraint", "kernel", (0, 2))]),
    ((L.Conv2DTranspose,), [("kernel_constraint", "kernel", (0, 1, 3))]),
    ((L.Conv3DTranspose,), [("kernel_constraint", "kernel", (0, 1, 2, 4))]),
    (
        (L.DepthwiseConv1D,),
        [("depthwise_constraint", "kernel", (0,))],
    ),
    (
        (L.DepthwiseConv2D,),
        [("depthwise_constraint", "kernel", (0, 1))],
    ),
    (
        (L.SeparableConv1D,),
        [
            ("depthwise_constraint", "depthwise_kernel", (0,)),
            ("pointwise_constraint", "pointwise_kernel", None),
        ],
    ),
    (
        (L.SeparableConv2D,),
        [
            ("depthwise_constraint", "depthwise_kernel", (0, 1)),
            ("pointwise_constraint", "pointwise_kernel", None),
        ],
    ),
    ((L.Conv1D, L.Conv2D, L.Conv3D), [("kernel_constraint", "kernel", None)]),
    ((L.Dense,), [("kernel_constraint", "kernel", None)]),
    ((L.Embedding,), [("embeddings_constraint", "embeddings", 1)]),
)


def _sublayers(layer, seen):
    """Yields `layer` and every layer nested in it, once each."""
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for value in list(vars(layer).values()):
        items = value.values() if isinstance(value, dict) else value
        if isinstance(items, (list, tuple)):
            candidates = items
        else:
            candidates = (value,)
        for item in candidates:
            if isinstance(item, keras.layers.Layer):
                yield from _sublayers(item, seen)


@export("keras_regularize.constraints.apply_max_norm")
def apply_max_norm(model, max_value=3.0):
    """Attaches a `MaxNorm` with the right unit axes to every kernel.

    Walks `model` and its nested layers and sets a
    `keras_regularize.constraints.MaxNorm(max_value, axis)` on each weight
    matrix whose layout it knows, choosing `axis` so that one unit is one
    output unit's incoming weights:

    - `Dense`, `Conv1D/2D/3D`: all axes but the last.
    - `Conv1D/2D/3DTranspose` (kernel `(..., out, in)`): all axes but the
      output axis `-2`.
    - `DepthwiseConv1D/2D`: the spatial axes (each channel-multiplier pair
      is fed by one spatial window); `SeparableConv1D/2D`: the same for the
      depthwise kernel and all but the last axis for the pointwise kernel.
    - `Embedding`: each row (embedding vector) separately.

    Existing constraints on those weights are replaced; biases and other
    layers are left alone. Works before or after the model is built, and the
    constraints are saved with the model's config.

    Args:
        model: A `keras.Model` (or layer).
        max_value: Positive float. Largest allowed norm per unit. Defaults
            to `3.0`.

    Returns:
        The same `model`, for chaining.

    Example:

    >>> model = keras.Sequential([keras.Input((4, 4, 2)),
    ...                           keras.layers.Conv2DTranspose(3, 2)])
    >>> model = keras_regularize.constraints.apply_max_norm(model, 2.0)
    >>> model.layers[0].kernel_constraint.axis
    (0, 1, 3)
    """
    max_value = check_number("max_value", max_value, 0.0, low_open=True)
    count = 0
    for layer in _sublayers(model, set()):
        for types, slots in _RULES:
            if not isinstance(layer, types):
                continue
            for constraint_attr, variable_attr, axis in slots:
                constraint = MaxNorm(max_value, axis=axis)
                setattr(layer, constraint_attr, constraint)
                if layer.built:
                    getattr(layer, variable_attr).constraint = constraint
                count += 1
            break
    if not count:
        warnings.warn(
            "apply_max_norm found no Dense, convolution or Embedding layer "
            f"in {getattr(model, 'name', model)!r}; nothing was constrained.",
            stacklevel=2,
        )
    return model
