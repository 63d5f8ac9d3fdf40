"""The linear-decay drop-rate schedule for stochastic depth."""

from keras_regularize._export import export
from keras_regularize._validation import check_int
from keras_regularize._validation import check_rate


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
