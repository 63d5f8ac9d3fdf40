"""Stochastic depth ("drop path") for residual branches, and its rate schedule.

Papers: Deep Networks with Stochastic Depth (https://arxiv.org/abs/1603.09382);
FractalNet (https://arxiv.org/abs/1605.07648), which named "drop-path".
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_int
from keras_regularize._validation import check_rate
from keras_regularize.layers._rate import BranchDropLayer
from keras_regularize.layers._seeded import draw_seed

MODES = ("row", "batch")


def keep_mask(inputs, keep_prob, mode, owner):
    """A {0, 1} mask in `inputs.dtype`, broadcastable against `inputs`.

    `mode="row"` draws one decision per sample (shape `(B, 1, ..., 1)`),
    each replica of a data-parallel step its own; `mode="batch"` draws one
    for the whole batch (shape `(1, ..., 1)`), the same on every replica.
    `owner` holds the `seed_generator`.
    """
    rank = len(inputs.shape)
    if mode == "row":
        shape = (ops.shape(inputs)[0],) + (1,) * (rank - 1)
    else:
        shape = (1,) * rank
    seed = draw_seed(owner, per_replica=mode == "row")
    u = keras.random.uniform(shape, dtype="float32", seed=seed)
    return ops.cast(u < keep_prob, inputs.dtype)


def drop_branch(inputs, keep_prob, mode, scale_by_keep, owner):
    """Zeroes whole samples (or the whole batch) of a residual branch."""
    mask = keep_mask(inputs, keep_prob, mode, owner)
    if scale_by_keep:
        mask = mask / ops.cast(keep_prob, inputs.dtype)
    return inputs * mask


@export("keras_regularize.layers.DropPath")
class DropPath(BranchDropLayer):
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

    >>> inputs = keras.Input((16,))
    >>> branch = keras.layers.Dense(16)(inputs)
    >>> outputs = inputs + keras_regularize.layers.DropPath(rate=0.1)(branch)
    >>> model = keras.Model(inputs, outputs)
    >>> layer = keras_regularize.layers.DropPath(rate=0.5)
    >>> keras.ops.convert_to_numpy(layer(np.ones((2, 3), "float32")))
    array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)

    References:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
        - [Larsson et al., 2016](https://arxiv.org/abs/1605.07648)
    """

    MODES = MODES

    def __init__(
        self, rate=0.1, mode="row", scale_by_keep=True, seed=None, **kwargs
    ):
        super().__init__(rate, mode, scale_by_keep, seed, **kwargs)
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
        return drop_branch(
            inputs,
            self._keep_prob(),
            self.mode,
            self.scale_by_keep,
            self,
        )


@export("keras_regularize.layers.drop_path_rates")
def drop_path_rates(num_blocks, max_rate, stages=None):
    """Linearly increasing drop rates, 0 for the first block to `max_rate`.

    Block `i` of `n` gets `max_rate * i / (n - 1)` (a single block gets 0, as
    with `numpy.linspace`). With `stages`, the same schedule over all blocks
    is split into one list per stage.

    Args:
        num_blocks: Int >= 0. Total number of residual blocks.
        max_rate: Float in `[0, 1)`. Rate of the last block.
        stages: Optional list of non-negative ints, the blocks per stage;
            must sum to `num_blocks`. Defaults to `None`.

    Returns:
        A list of `num_blocks` floats, or with `stages` a list of lists.

    Example:

    >>> keras_regularize.layers.drop_path_rates(5, 0.2)
    [0.0, 0.05, 0.1, 0.15, 0.2]
    >>> keras_regularize.layers.drop_path_rates(4, 0.3, stages=[1, 3])
    [[0.0], [0.1, 0.2, 0.3]]

    References:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
    """
    num_blocks = check_int("num_blocks", num_blocks, 0)
    max_rate = check_rate("max_rate", max_rate)
    if num_blocks <= 1:
        rates = [0.0] * num_blocks
    else:
        # round() trims float noise such as 0.15000000000000002.
        rates = [
            round(max_rate * i / (num_blocks - 1), 12)
            for i in range(num_blocks)
        ]
    if stages is None:
        return rates
    if not isinstance(stages, (list, tuple)) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0
        for c in stages
    ):
        raise ValueError(
            "Invalid value received for argument `stages`. Expected a list of "
            f"non-negative ints. Received: stages={stages!r}"
        )
    if sum(stages) != num_blocks:
        raise ValueError(
            "Invalid value received for argument `stages`. Expected counts "
            f"summing to num_blocks={num_blocks}. Received: stages={stages!r}"
        )
    out, start = [], 0
    for count in stages:
        out.append(rates[start : start + count])
        start += count
    return out
