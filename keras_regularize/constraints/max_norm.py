"""Max-norm: the constraint, and the helper that puts it on every kernel.

The constraint leaves units under the limit bit-identical.
"""

import functools
import numbers
import warnings

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._layer_walk import walk_layers
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize.constraints._kernel_layout import kernel_units

_AXIS_EXPECTED = "None, an int or a tuple of distinct ints"


def _is_int(value):
    return isinstance(value, numbers.Integral) and not (
        isinstance(value, bool) or type(value).__name__ == "bool_"
    )


def _check_axis(axis):
    """`None`, an int, or a tuple of distinct ints (a list is accepted)."""
    if axis is None:
        return None
    if _is_int(axis):
        return int(axis)
    if not isinstance(axis, (tuple, list)):
        fail("axis", _AXIS_EXPECTED, axis)
    if not all(_is_int(a) for a in axis):
        fail("axis", _AXIS_EXPECTED, axis)
    axes = tuple(int(a) for a in axis)
    if len(set(axes)) != len(axes):
        fail("axis", _AXIS_EXPECTED, axis)
    return axes


def _normalize_axis(axis, shape):
    """The sorted non-negative axes to reduce, checked against `shape`."""
    rank = len(shape)
    if axis is None:
        return tuple(range(rank - 1))
    axes = (axis,) if isinstance(axis, int) else axis
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(
                f"Invalid value received for argument `axis`. Expected axes "
                f"in [-{rank}, {rank}) for a kernel of rank {rank}. Received: "
                f"axis={axis!r} for a kernel of shape {tuple(shape)}"
            )
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ValueError(
            "Invalid value received for argument `axis`. Expected distinct "
            f"axes for a kernel of rank {rank}. Received: axis={axis!r} for a "
            f"kernel of shape {tuple(shape)}"
        )
    return tuple(sorted(out))


@export("keras_regularize.constraints.MaxNorm")
class MaxNorm(keras.constraints.Constraint):
    """Caps the L2 norm of each unit's weights at `max_value`.

    A unit is the slice of the weight tensor reached by reducing over
    `axis`. Units whose norm is at or below `max_value` are returned exactly
    as they are (selected with `ops.where`, not multiplied by a factor that
    is 1 up to rounding); units above it are rescaled to norm `max_value`.

    `axis=None` reduces over every axis but the last, the fan-in of each
    output unit for `Dense` kernels `(in, out)` and `Conv1D/2D/3D` kernels
    `(..., in, out)`. For other layouts (transposed or depthwise
    convolutions, embeddings, `EinsumDense`) pass `axis` or use
    `keras_regularize.constraints.apply_max_norm`, which picks it per layer.
    `axis=()` makes every element its own unit (`|w| <= max_value`).

    The weights must have a floating-point dtype; integer or bool weights
    raise a `ValueError` (rescaling them would truncate to zero). An axis
    outside the weights' rank raises a `ValueError` naming the axis and the
    weights' shape.

    Args:
        max_value: Positive finite float. Largest allowed norm per unit.
            Defaults to `3.0`.
        axis: `None`, an int or a tuple of distinct ints: the axes the norm
            is taken over. Defaults to `None` (all but the last).

    Example:

    >>> layer = keras.layers.Dense(
    ...     16, kernel_constraint=keras_regularize.constraints.MaxNorm(3.0))

    Applied to a kernel whose two units have norms 5 and 0.5, it rescales
    the first to norm 1 and leaves the second as it is:

    >>> max_norm = keras_regularize.constraints.MaxNorm(max_value=1.0)
    >>> kernel = np.array([[3.0, 0.3], [4.0, 0.4]], "float32")
    >>> keras.ops.convert_to_numpy(max_norm(kernel)).round(3)
    array([[0.6, 0.3],
           [0.8, 0.4]], dtype=float32)

    References:
        - [Srivastava et al., 2014](https://jmlr.org/papers/v15/srivastava14a.html)
    """

    def __init__(self, max_value=3.0, axis=None):
        self.max_value = check_number(
            "max_value", max_value, 0.0, low_open=True
        )
        self.axis = _check_axis(axis)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        check_input_dtype("MaxNorm", w, argument="w")
        axes = _normalize_axis(self.axis, tuple(w.shape))
        w32 = ops.cast(w, "float32")
        if axes:
            norms = ops.sqrt(ops.sum(ops.square(w32), axis=axes, keepdims=True))
        else:
            # No axis to reduce (some backends read `axis=()` as "all").
            norms = ops.absolute(w32)
        over = norms > self.max_value
        # Guard the division where it is not used (norm 0 is never over).
        scale = self.max_value / ops.where(over, norms, 1.0)
        return ops.where(over, ops.cast(w32 * scale, w.dtype), w)

    def get_config(self):
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {"max_value": self.max_value, "axis": axis}


def _own_matrices(layer):
    """Rank >= 2 trainable weights `layer` owns itself (not a sublayer)."""
    nested = set()
    for child in list(walk_layers(layer))[1:]:
        nested.update(id(v) for v in child.weights)
    return [
        v
        for v in layer.trainable_weights
        if id(v) not in nested
        and len(v.shape) >= 2
        and not v.name.endswith("bias")
    ]


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
        for layer in walk_layers(root):
            slots = kernel_units(layer)
            if slots is None:
                if not layer.built:
                    self.after_build(layer)
                    continue
                matrices = _own_matrices(layer)
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
    for layer in walk_layers(root):
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

    >>> model = keras.Sequential([
    ...     keras.Input((4, 4, 2)),
    ...     keras.layers.Conv2DTranspose(3, 2),
    ...     keras.layers.Flatten(),
    ...     keras.layers.Dense(10),
    ... ])
    >>> model = keras_regularize.constraints.apply_max_norm(model, 2.0)

    Each kernel gets the unit axes of its own layout (a transposed
    convolution's kernel is `(height, width, out, in)`):

    >>> model.layers[0].kernel_constraint.axis
    (0, 1, 3)
    >>> model.layers[-1].kernel_constraint.get_config()  # Dense
    {'max_value': 2.0, 'axis': None}
    """
    if not isinstance(model, keras.layers.Layer):
        fail("model", "a `keras.Model` or `keras.layers.Layer`", model)
    max_value = check_number("max_value", max_value, 0.0, low_open=True)
    count, skipped = _Run(max_value).constrain(model)
    _warn_skipped(skipped, stacklevel=2)
    unbuilt = any(not layer.built for layer in walk_layers(model))
    if not count and not skipped and not unbuilt:
        warnings.warn(
            "apply_max_norm found no Dense, convolution, EinsumDense or "
            f"Embedding layer in {getattr(model, 'name', model)!r}; nothing "
            "was constrained.",
            stacklevel=2,
        )
    _reset_train_functions(model)
    return model
