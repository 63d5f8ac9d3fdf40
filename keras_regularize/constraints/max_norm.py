"""Max-norm constraint that leaves units under the limit bit-identical."""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_number


def _normalize_axis(axis, rank):
    if axis is None:
        return tuple(range(rank - 1))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted({a % rank for a in axes}))


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
    convolutions, embeddings) pass `axis` or use
    `keras_regularize.constraints.apply_max_norm`, which picks it per layer.

    Args:
        max_value: Positive float. Largest allowed norm per unit. Defaults
            to `3.0`.
        axis: `None`, an int or a tuple of ints: the axes the norm is taken
            over. Defaults to `None` (all but the last).

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
        if axis is not None and not isinstance(axis, int):
            axis = tuple(int(a) for a in axis)
        self.axis = axis

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        axes = _normalize_axis(self.axis, len(w.shape))
        w32 = ops.cast(w, "float32")
        norms = ops.sqrt(ops.sum(ops.square(w32), axis=axes, keepdims=True))
        over = norms > self.max_value
        # Guard the division where it is not used (norm 0 is never over).
        scale = self.max_value / ops.where(over, norms, 1.0)
        return ops.where(over, ops.cast(w32 * scale, w.dtype), w)

    def get_config(self):
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {"max_value": self.max_value, "axis": axis}
