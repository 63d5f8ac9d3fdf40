"""DropBlock: structured dropout of contiguous square regions of feature maps.

Paper: DropBlock: A regularization method for convolutional networks
(https://arxiv.org/abs/1810.12890).
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_data_format
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_int
from keras_regularize._validation import fail
from keras_regularize._validation import fail_shape
from keras_regularize.layers._rate import RateLayer
from keras_regularize.layers._seeded import draw_seed


@export("keras_regularize.layers.DropBlock2D")
class DropBlock2D(RateLayer):
    """Drops contiguous `block_size x block_size` regions of feature maps.

    In training, block corners are drawn independently per sample and
    channel with the paper's probability

    `gamma = rate / block_size**2 * (H * W) / ((H - block_size + 1) *
    (W - block_size + 1))`

    over the `(H - block_size + 1) x (W - block_size + 1)` positions where a
    whole block fits, so every row and column of a map, square or not, can
    be dropped. Each corner zeroes the block below and to its right; the
    kept activations are rescaled by `count / kept` so the batch total is
    preserved on average. Identity at inference.

    Args:
        rate: Float in `[0, 1)`. Target fraction of activations to drop.
            Defaults to `0.1`.
        block_size: Int >= 1, no larger than the feature map's height and
            width. Defaults to `7`.
        data_format: `"channels_last"` (`(B, H, W, C)`) or `"channels_first"`
            (`(B, C, H, W)`), or `None` for
            `keras.config.image_data_format()`. Defaults to `None`.
        seed: Optional non-negative int for the layer's seed generator.
            Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Rank-4 floating-point tensor in `data_format` with static
            height and width. Integer and bool inputs are refused (the
            rescale factor is fractional): cast them first.
        training: Python bool. Blocks are dropped only when `True`.

    Example:

    After a convolution, in a channels-last image model:

    >>> model = keras.Sequential([
    ...     keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
    ...     keras_regularize.layers.DropBlock2D(
    ...         rate=0.1, block_size=5, data_format="channels_last", seed=0),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(10),
    ... ])
    >>> model.output_shape
    (None, 10)

    In training, each sample and channel loses random `3 x 3` squares and
    the rest is scaled up; at inference the layer returns its input:

    >>> layer = keras_regularize.layers.DropBlock2D(
    ...     rate=0.2, block_size=3, data_format="channels_last", seed=0)
    >>> x = np.ones((2, 10, 6, 4), "float32")
    >>> tuple(layer(x, training=True).shape)
    (2, 10, 6, 4)
    >>> keras.ops.convert_to_numpy(layer(x))[0, :2, :, 0]
    array([[1., 1., 1., 1., 1., 1.],
           [1., 1., 1., 1., 1., 1.]], dtype=float32)

    References:
        - [Ghiasi et al., 2018](https://arxiv.org/abs/1810.12890)
    """

    CONFIG = ("rate", "block_size", "data_format", "seed")

    def __init__(
        self, rate=0.1, block_size=7, data_format=None, seed=None, **kwargs
    ):
        super().__init__(rate, seed, **kwargs)
        self.block_size = check_int("block_size", block_size, 1)
        self.data_format = check_data_format("data_format", data_format)

    def _spatial(self, shape):
        if len(shape) != 4:
            raise ValueError(
                "Invalid input received for `DropBlock2D`. Expected a rank-4 "
                f"tensor in {self.data_format}. Received: shape={tuple(shape)}"
            )
        if self.data_format == "channels_last":
            return shape[1], shape[2]
        return shape[2], shape[3]

    def build(self, input_shape):
        height, width = self._spatial(input_shape)
        self._check_block(height, width)
        self.built = True

    def _check_block(self, height, width):
        for size in (height, width):
            if size is not None and self.block_size > size:
                fail(
                    "block_size",
                    "at most the feature map's height and width "
                    f"({height}x{width})",
                    self.block_size,
                )

    def call(self, inputs, training=False):
        # The rescale factor `count / kept` is fractional: integer inputs
        # would truncate it.
        check_input_dtype("DropBlock2D", inputs)
        if not training:
            return inputs
        height, width = self._spatial(inputs.shape)
        if height is None or width is None:
            fail_shape(
                "inputs",
                f"a rank-4 tensor in {self.data_format} with static height "
                "and width",
                inputs.shape,
            )
        self._check_block(height, width)
        size = self.block_size
        rows, cols = height - size + 1, width - size + 1
        gamma = (1.0 - self._keep_prob()) * (
            (height * width) / (size * size * rows * cols)
        )
        batch = ops.shape(inputs)[0]
        channels = inputs.shape[3 if self.data_format == "channels_last" else 1]
        # Block corners, channels_last, over the positions where a block fits.
        corners = keras.random.uniform(
            (batch, rows, cols, channels),
            dtype="float32",
            seed=draw_seed(self),
        )
        corners = ops.cast(corners < gamma, "float32")
        if size > 1:
            pad = size - 1
            corners = ops.pad(corners, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            # Each output pixel is dropped if any corner within
            # `size - 1` rows above and columns to the left was drawn.
            corners = ops.max_pool(
                corners,
                pool_size=size,
                strides=1,
                padding="valid",
                data_format="channels_last",
            )
        keep = 1.0 - corners
        if self.data_format == "channels_first":
            keep = ops.transpose(keep, (0, 3, 1, 2))
        total = ops.cast(ops.size(keep), "float32")
        scale = total / ops.maximum(ops.sum(keep), 1.0)
        return inputs * ops.cast(keep * scale, inputs.dtype)
