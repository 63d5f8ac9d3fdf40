"""Max-norm constraint that leaves units under the limit bit-identical."""

import numbers

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_number
from keras_regularize._validation import fail

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

    >>> c = keras_regularize.constraints.MaxNorm(max_value=1.0)
    >>> w = keras.ops.convert_to_tensor([[3.0, 0.3], [4.0, 0.4]])
    >>> keras.ops.convert_to_numpy(c(w)).astype("float64").round(3).tolist()
    [[0.6, 0.3], [0.8, 0.4]]

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
