"""Stochastic depth as a merge layer: `shortcut + drop(residual)`.

Paper: Deep Networks with Stochastic Depth (https://arxiv.org/abs/1603.09382).
"""

from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import fail
from keras_regularize._validation import fail_shape
from keras_regularize.layers._rate import BranchDropLayer
from keras_regularize.layers.drop_path import MODES
from keras_regularize.layers.drop_path import drop_branch


def _shapes(value):
    """Shapes of a list of tensors (or shapes); anything else as it is."""
    if isinstance(value, (list, tuple)) and all(
        hasattr(v, "shape") for v in value
    ):
        return [tuple(v.shape) for v in value]
    return getattr(value, "shape", value)


def _check_pair(shapes):
    if (
        not isinstance(shapes, (list, tuple))
        or len(shapes) != 2
        or not all(isinstance(s, (list, tuple)) for s in shapes)
    ):
        fail(
            "inputs",
            "a list of two tensors of the same shape, `[shortcut, residual]`",
            shapes,
        )
    a, b = (tuple(s) for s in shapes)
    if len(a) != len(b) or any(
        x is not None and y is not None and x != y for x, y in zip(a, b)
    ):
        fail_shape(
            "residual",
            f"the same shape as `shortcut` ({a} and {b} differ)",
            b,
        )
    return a


@export("keras_regularize.layers.StochasticDepth")
class StochasticDepth(BranchDropLayer):
    """Adds a residual branch to its shortcut, dropping the branch at random.

    Called on `[shortcut, residual]`, it returns `shortcut + residual` with the
    residual dropped as by `DropPath`: for whole samples (`mode="row"`) or the
    whole batch (`mode="batch"`), with probability `rate`.

    With `scale_by_keep=True` (the modern form) kept residuals are divided by
    `1 - rate` in training and inference returns `shortcut + residual`. With
    `scale_by_keep=False` it follows the original paper: no scaling in
    training, and `shortcut + (1 - rate) * residual` at inference.

    Args:
        rate: Float in `[0, 1)`. Probability of dropping the residual.
            Defaults to `0.1`.
        mode: `"row"` or `"batch"`. Defaults to `"row"`.
        scale_by_keep: Python bool. Defaults to `True`.
        seed: Optional non-negative int for the layer's seed generator.
            Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: List `[shortcut, residual]` of two floating-point tensors
            of one shape, rank >= 2, batch first. Integer and bool inputs
            are refused: cast them to a float dtype first.
        training: Python bool. The residual is dropped only when `True`.

    Example:

    In place of the `shortcut + residual` addition of a residual block:

    >>> inputs = keras.Input((16,))
    >>> residual = keras.layers.Dense(16, activation="relu")(inputs)
    >>> outputs = keras_regularize.layers.StochasticDepth(rate=0.1, seed=0)(
    ...     [inputs, residual])
    >>> model = keras.Model(inputs, outputs)
    >>> model.output_shape
    (None, 16)

    With `scale_by_keep=False` (the original paper), inference adds the
    residual scaled by its survival probability `1 - rate`:

    >>> layer = keras_regularize.layers.StochasticDepth(
    ...     rate=0.5, scale_by_keep=False)
    >>> shortcut = np.ones((1, 3), "float32")
    >>> residual = np.full((1, 3), 2.0, "float32")
    >>> keras.ops.convert_to_numpy(layer([shortcut, residual]))
    array([[2., 2., 2.]], dtype=float32)

    References:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
    """

    MODES = MODES

    def __init__(
        self, rate=0.1, mode="row", scale_by_keep=True, seed=None, **kwargs
    ):
        super().__init__(rate, mode, scale_by_keep, seed, **kwargs)

    def build(self, input_shape):
        shape = _check_pair(input_shape)
        if len(shape) < 2:
            fail_shape("shortcut", "a tensor of rank >= 2 (batch first)", shape)
        self.built = True

    def call(self, inputs, training=False):
        _check_pair(_shapes(inputs))
        shortcut, residual = inputs
        check_input_dtype("StochasticDepth", shortcut, "shortcut")
        check_input_dtype("StochasticDepth", residual, "residual")
        if training:
            residual = drop_branch(
                residual,
                self._keep_prob(),
                self.mode,
                self.scale_by_keep,
                self,
            )
        elif not self.scale_by_keep:
            residual = residual * ops.cast(self._keep_prob(), residual.dtype)
        return shortcut + residual

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Symbolic calls refuse integer inputs too, when the model is built.
        if isinstance(inputs, (list, tuple)) and len(inputs) == 2:
            check_input_dtype("StochasticDepth", inputs[0], "shortcut")
            check_input_dtype("StochasticDepth", inputs[1], "residual")
        return super().compute_output_spec(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def compute_mask(self, inputs, mask=None):
        if mask is None or not isinstance(mask, (list, tuple)):
            return mask
        masks = [m for m in mask if m is not None]
        if not masks:
            return None
        if len(masks) == 1:
            return masks[0]
        return ops.logical_and(masks[0], masks[1])
