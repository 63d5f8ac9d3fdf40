"""Attach a layout-aware max-norm constraint to every kernel of a model."""

import functools
import warnings

import keras

from keras_regularize._export import export
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
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
#   EinsumDense       from its equation, see `einsum_reduce_axes`
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
    ((L.Embedding,), [("embeddings_constraint", "embeddings", (1,))]),
)

TRANSPOSED_CONVS = (
    L.Conv1DTranspose,
    L.Conv2DTranspose,
    L.Conv3DTranspose,
)


def einsum_reduce_axes(equation):
    """The kernel axes an `EinsumDense` reduces for one output unit.

    The output-unit axes of the kernel are its subscripts that also appear
    in the output; the others are summed over by the einsum and make up a
    unit's fan-in. `"abc,cde->abde"` (a `MultiHeadAttention` query) gives
    `(0,)`; `"abcd,cde->abe"` (its output projection) gives `(0, 1)`.
    """
    spec = equation.replace("...", "").replace(" ", "")
    inputs, output = spec.split("->")
    kernel = inputs.split(",")[1]
    return tuple(i for i, s in enumerate(kernel) if s not in output)


def kernel_units(layer):
    """`[(constraint attribute, variable attribute, norm axes)]` of `layer`.

    `None` when the layer type is not one whose kernel layout is known.
    """
    if isinstance(layer, L.EinsumDense):
        axes = einsum_reduce_axes(layer.equation)
        return [("kernel_constraint", "kernel", axes)]
    for types, slots in _RULES:
        if isinstance(layer, types):
            return slots
    return None


def sublayers(layer, seen=None):
    """Yields `layer` and every layer nested in it, once each."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for value in list(vars(layer).values()):
        items = value.values() if isinstance(value, dict) else value
        if isinstance(items, (list, tuple)) or isinstance(value, dict):
            candidates = list(items)
        else:
            candidates = (value,)
        for item in candidates:
            if isinstance(item, keras.layers.Layer):
                yield from sublayers(item, seen)


def _own_matrices(layer, children):
    """Rank >= 2 trainable weights `layer` owns itself (not a sublayer)."""
    nested = set()
    for child in children:
        nested.update(id(v) for v in child.weights)
    return [
        v
        for v in layer.trainable_weights
        if id(v) not in nested
        and len(v.shape) >= 2
        and not v.name.endswith("bias")
    ]


def _children(layer):
    walk = sublayers(layer)
    next(walk)
    return [child for child in walk if child is not layer]


def _describe(layer, reason):
    return f"{type(layer).__name__} {layer.name!r} ({reason})"


class _Run:
    """One `apply_max_norm` call: its limit and the layers reported."""

    def __init__(self, max_value):
        self.max_value = max_value
        self.reported = set()

    def skip(self, skipped, layer, reason):
        if id(layer) not in self.reported:
            self.reported.add(id(layer))
            skipped.append(_describe(layer, reason))

    def constrain(self, root):
        """Constrains what `root` holds now; returns (count, skipped)."""
        count, skipped = 0, []
        for layer in sublayers(root):
            slots = kernel_units(layer)
            if slots is None:
                if not layer.built:
                    self.after_build(layer)
                    continue
                matrices = _own_matrices(layer, _children(layer))
                if matrices:
                    shapes = ", ".join(
                        f"{v.name} {tuple(v.shape)}" for v in matrices
                    )
                    self.skip(skipped, layer, f"unknown layout: {shapes}")
                continue
            if getattr(layer, "quantization_mode", None) is not None:
                self.skip(skipped, layer, "quantized")
                continue
            if getattr(layer, "lora_enabled", False):
                self.skip(skipped, layer, "LoRA enabled")
                continue
            for constraint_attr, variable_attr, axis in slots:
                constraint = MaxNorm(self.max_value, axis=axis)
                setattr(layer, constraint_attr, constraint)
                if layer.built:
                    getattr(layer, variable_attr).constraint = constraint
                count += 1
        return count, skipped

    def after_build(self, layer):
        """Constrains the sublayers an unbuilt layer creates in `build`.

        `MultiHeadAttention`, for instance, makes its projections only then.
        """
        build = layer.build

        # `wraps` keeps the signature: Keras maps shapes to build arguments
        # by name (`RNN.build(sequences_shape, ...)`).
        @functools.wraps(build)
        def build_then_constrain(*args, **kwargs):
            build(*args, **kwargs)
            _, skipped = self.constrain(layer)
            _warn_skipped(skipped, stacklevel=2)

        layer.build = build_then_constrain


def _warn_skipped(skipped, stacklevel):
    if skipped:
        warnings.warn(
            "apply_max_norm did not constrain these layers, whose weight "
            "layout it does not know: " + "; ".join(skipped) + ".",
            stacklevel=stacklevel + 1,
        )


def _reset_train_functions(root):
    # A compiled train step traced the old constraints (none, or another
    # `max_value`) into its graph on JAX and TensorFlow: make a new one.
    for layer in sublayers(root):
        if getattr(layer, "train_function", None) is not None:
            layer.make_train_function(force=True)


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
    - `EinsumDense`, including the query, key, value and output projections
      of `MultiHeadAttention`: the kernel axes whose subscripts are summed
      over by its equation (those missing from the output). For
      `"abc,cde->abde"` that is axis 0, so each (head, feature) pair is one
      unit.

    Existing constraints on those weights are replaced; biases are left
    alone. Every other layer that owns a trainable weight of rank >= 2
    (an `LSTM` cell, `PReLU`, a custom layer), and every quantized or
    LoRA-enabled layer, is left alone and named in one `UserWarning`.
    Layers that are not built yet are handled when they are built (so the
    sublayers `MultiHeadAttention` creates then are constrained too).

    It works before or after the model is built or compiled, and between
    `fit` calls: a compiled train function is rebuilt, so the next step
    applies the new constraints on every backend. Pass the model that was
    compiled. The constraints are saved with the model's config, except
    those of `MultiHeadAttention` projections, which Keras rebuilds from
    the attention layer's own config: call `apply_max_norm` again after
    loading such a model.

    Args:
        model: A `keras.Model` (or layer).
        max_value: Positive finite float. Largest allowed norm per unit.
            Defaults to `3.0`.

    Returns:
        The same `model`, for chaining.

    Example:

    >>> model = keras.Sequential([keras.Input((4, 4, 2)),
    ...                           keras.layers.Conv2DTranspose(3, 2)])
    >>> model = keras_regularize.constraints.apply_max_norm(model, 2.0)
    >>> model.layers[0].kernel_constraint.axis
    (0, 1, 3)
    """
    if not isinstance(model, keras.layers.Layer):
        fail("model", "a `keras.Model` or `keras.layers.Layer`", model)
    max_value = check_number("max_value", max_value, 0.0, low_open=True)
    count, skipped = _Run(max_value).constrain(model)
    _warn_skipped(skipped, stacklevel=2)
    unbuilt = any(not layer.built for layer in sublayers(model))
    if not count and not skipped and not unbuilt:
        warnings.warn(
            "apply_max_norm found no Dense, convolution, EinsumDense or "
            f"Embedding layer in {getattr(model, 'name', model)!r}; nothing "
            "was constrained.",
            stacklevel=2,
        )
    _reset_train_functions(model)
    return model
