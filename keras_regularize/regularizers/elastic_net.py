"""Elastic-net weight penalty: a mix of L1 and squared L2."""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_number


@export("keras_regularize.regularizers.ElasticNet")
class ElasticNet(keras.regularizers.Regularizer):
    """Penalizes weights with a weighted sum of L1 and squared L2 norms.

    The penalty is
    `strength * (l1_ratio * sum(|w|) + (1 - l1_ratio) * sum(w ** 2))`,
    the same as `keras.regularizers.L1L2(l1=strength * l1_ratio,
    l2=strength * (1 - l1_ratio))` but with the overall strength and the
    L1 share as separate knobs (the scikit-learn parametrization), so a
    sweep over one does not move the other. The weights must have a
    floating-point dtype.

    Args:
        strength: Non-negative finite float. Overall penalty factor.
            Defaults to `1e-4`.
        l1_ratio: Float in `[0, 1]`. Share of the L1 term; `1` is pure L1,
            `0` pure squared L2. Defaults to `0.5`.

    Example:

    >>> layer = keras.layers.Dense(
    ...     16,
    ...     kernel_regularizer=keras_regularize.regularizers.ElasticNet(
    ...         strength=1e-4, l1_ratio=0.5),
    ... )

    The penalty of a small weight vector, `0.25 * 3 + 0.75 * 5`:

    >>> reg = keras_regularize.regularizers.ElasticNet(1.0, l1_ratio=0.25)
    >>> float(reg(np.array([1.0, -2.0], "float32")))
    4.5

    References:
        - [Zou and Hastie, 2005](https://doi.org/10.1111/j.1467-9868.2005.00503.x)
    """

    def __init__(self, strength=1e-4, l1_ratio=0.5):
        self.strength = check_number("strength", strength, 0.0)
        self.l1_ratio = check_number("l1_ratio", l1_ratio, 0.0, 1.0)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        check_input_dtype("ElasticNet", x, argument="x")
        l1 = ops.sum(ops.absolute(x))
        l2 = ops.sum(ops.square(x))
        penalty = self.l1_ratio * l1 + (1.0 - self.l1_ratio) * l2
        return ops.cast(self.strength, x.dtype) * penalty

    def get_config(self):
        return {"strength": self.strength, "l1_ratio": self.l1_ratio}
