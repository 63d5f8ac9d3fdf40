"""Per-sample or per-batch stochastic depth ("drop path") for residual branches.

Papers: Deep Networks with Stochastic Depth (https://arxiv.org/abs/1603.09382);
FractalNet (https://arxiv.org/abs/1605.07648), which named "drop-path".
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_seed
from keras_regularize.layers._rate import RateLayer

MODES = ("row", "batch")


def keep_mask(inputs, keep_prob, mode, seed_generator):
    """A {0, 1} mask in `inputs.dtype`, broadcastable against `inputs`.

    `mode="row"` draws one decision per sample (shape `(B, 1, ..., 1)`);
    `mode="batch"` draws one for the whole batch (shape `(1, ..., 1)`).
    """
    rank = len(inputs.shape)
    if mode == "row":
        shape = (ops.shape(inputs)[0],) + (1,) * (rank - 1)
    else:
        shape = (1,) * rank
    u = keras.random.uniform(shape, dtype="float32", seed=seed_generator)
    return ops.cast(u < keep_prob, inputs.dtype)


def drop_path(inputs, keep_prob, mode, scale_by_keep, seed_generator):
    """Zeroes whole samples (or the whole batch) of a residual branch."""
    mask = keep_mask(inputs, keep_prob, mode, seed_generator)
    if scale_by_keep:
        mask = mask / ops.cast(keep_prob, inputs.dtype)
    return inputs * mask


@export("keras_regularize.layers.DropPath")
class DropPath(RateLayer):
    """Drops a residual branch for whole samples, or the whole batch.

    During training each sample's branch is zeroed with probability `rate`
    (`mode="row"`), or the branch of the entire batch is zeroed at once
    (`mode="batch"`). Kept branches are scaled by `1 / (1 - rate)` when
    `scale_by_keep` is true, so the expected output equals the input. At
    inference the layer is the identity. Apply it to the branch, before the
    skip connection is added; masks pass through unchanged.

    The rate is held in a non-trainable variable: setting `layer.rate = 0.3`
    from a callback takes effect in already-compiled training steps.

    Args:
        rate: Float in `[0, 1)`. Probability of dropping the branch.
            Defaults to `0.1`.
        mode: `"row"` (one decision per sample) or `"batch"` (one decision
            per call). Defaults to `"row"`.
        scale_by_keep: Python bool. Whether kept branches are divided by
            `1 - rate`. Defaults to `True`.
        seed: Optional non-negative int seeding the layer's
            `keras.random.SeedGenerator`. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Floating-point tensor of rank >= 2 whose axis 0 is the
            batch (0 rows allowed). Integer and bool inputs are refused:
            cast them to a float dtype first.
        training: Python bool. Branches are dropped only when `True`.

    Example:

    >>> layer = keras_regularize.layers.DropPath(rate=0.5, seed=0)
    >>> y = layer(keras.ops.ones((8, 4)), training=True)
    >>> sorted(set(keras.ops.convert_to_numpy(y).ravel().tolist())) in (
    ...     [0.0], [2.0], [0.0, 2.0])
    True
    >>> tuple(layer(keras.ops.ones((8, 4)), training=False).shape)
    (8, 4)

    References:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
        - [Larsson et al., 2016](https://arxiv.org/abs/1605.07648)
    """

    def __init__(
        self, rate=0.1, mode="row", scale_by_keep=True, seed=None, **kwargs
    ):
        super().__init__(rate, **kwargs)
        self.mode = check_choice("mode", mode, MODES)
        self.scale_by_keep = check_bool("scale_by_keep", scale_by_keep)
        self.seed = check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                "Invalid input received for `DropPath`. Expected a tensor of "
                f"rank >= 2 (batch first). Received: shape={input_shape}"
            )
        self.built = True

    def call(self, inputs, training=False):
        check_input_dtype("DropPath", inputs)
        if not training:
            return inputs
        return drop_path(
            inputs,
            self._keep_prob(),
            self.mode,
            self.scale_by_keep,
            self.seed_generator,
        )

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Symbolic calls (`keras.Input(..., dtype="int32")`) refuse integer
        # inputs too, when the model is built rather than at its first step.
        check_input_dtype("DropPath", inputs)
        return super().compute_output_spec(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "mode": self.mode,
            "scale_by_keep": self.scale_by_keep,
            "seed": self.seed,
        }
