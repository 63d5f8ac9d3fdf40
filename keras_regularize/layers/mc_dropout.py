"""Dropout that stays active at inference, for Monte Carlo dropout.

Paper: Dropout as a Bayesian Approximation: Representing Model Uncertainty in
Deep Learning (https://arxiv.org/abs/1506.02142).
"""

import numbers

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_rate
from keras_regularize._validation import fail
from keras_regularize.layers._seeded import Seeded
from keras_regularize.layers._seeded import add_seed_generator
from keras_regularize.layers._seeded import draw_seed


def check_noise_shape(noise_shape):
    """`None`, or a tuple of positive ints and `None`s (filled from inputs)."""
    if noise_shape is None:
        return None
    ok = isinstance(noise_shape, (tuple, list)) and all(
        d is None
        or (isinstance(d, numbers.Integral) and not isinstance(d, bool))
        and d >= 1
        for d in noise_shape
    )
    if not ok:
        fail(
            "noise_shape",
            "None or a tuple of positive ints and Nones",
            noise_shape,
        )
    return tuple(None if d is None else int(d) for d in noise_shape)


@export("keras_regularize.layers.MCDropout")
class MCDropout(Seeded, keras.layers.Layer):
    """Dropout that also drops units at inference (Monte Carlo dropout).

    Each call zeroes every unit with probability `rate` and scales the kept
    ones by `1 / (1 - rate)`, exactly as `keras.layers.Dropout` does in
    training, but whatever the `training` flag says. Repeated predictions
    of one input are therefore samples from the dropout ensemble; their
    spread estimates the model's uncertainty. Use
    `keras_regularize.models.mc_predict` to draw the samples in one
    vectorized pass while batch normalization stays in inference mode, or
    `keras_regularize.models.with_mc_dropout` to turn the `Dropout` layers
    of a trained model into this layer.

    The layer owns no weights (its only state is the seed generator), so
    weights saved from a model built with `keras.layers.Dropout` load into
    the same model built with `MCDropout`.

    Args:
        rate: Float in `[0, 1)`. Fraction of units to drop. Fixed at
            construction: setting `layer.rate` later raises, rather than
            being ignored by already compiled functions.
        noise_shape: Optional tuple of ints and `None`s, the shape of the
            binary mask broadcast against the inputs; `None` entries take the
            input's size. E.g. `(None, 1, None)` shares one mask over the
            time axis of `(batch, time, features)` inputs. A size of 1 on the
            batch axis shares one mask over the whole batch; `mc_predict`
            then draws its samples one pass at a time. Defaults to `None`
            (an independent mask per element).
        seed: Optional non-negative int seeding the layer's
            `keras.random.SeedGenerator`. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Floating-point tensor of any rank. Integer and bool inputs
            are refused: cast them to a float dtype first.
        training: Ignored: units are dropped in training and at inference.

    Example:

    In a model, where `keras.layers.Dropout` would go:

    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(32, activation="relu"),
    ...     keras_regularize.layers.MCDropout(0.2, seed=0),
    ...     keras.layers.Dense(1),
    ... ])

    At inference each call still drops units, so repeated calls on one
    input are samples: here 10,000 copies of an input of ones. Their mean
    is the input, their spread the dropout noise:

    >>> layer = keras_regularize.layers.MCDropout(0.5, seed=0)
    >>> copies = np.ones((10000, 3), "float32")
    >>> samples = keras.ops.convert_to_numpy(layer(copies))
    >>> samples.mean(axis=0).round(1), samples.std(axis=0).round(1)
    (array([1., 1., 1.], dtype=float32), array([1., 1., 1.], dtype=float32))

    References:
        - [Gal and Ghahramani, 2016](https://arxiv.org/abs/1506.02142)
    """

    CONFIG = ("rate", "noise_shape", "seed")

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self._rate = check_rate("rate", rate)
        self.noise_shape = check_noise_shape(noise_shape)
        add_seed_generator(self, seed)
        self.supports_masking = True
        # No weights to create: built at once, as keras.layers.Dropout is.
        # The input checks run when the layer is called instead. A subclass
        # with its own `build` is left to build itself.
        if type(self).build is keras.layers.Layer.build:
            self.built = True

    @property
    def rate(self):
        """The drop probability, fixed at construction."""
        return self._rate

    @rate.setter
    def rate(self, value):
        # A plain float, baked into compiled functions: changing it later
        # would be silently ignored there, so it is refused instead.
        raise AttributeError(
            "MCDropout.rate is fixed at construction (the layer owns no "
            "variables, so its weights stay interchangeable with "
            f"keras.layers.Dropout). Received: rate={value!r}. Build a new "
            "layer, or call keras_regularize.models.with_mc_dropout on a "
            "model whose Dropout layers have the rate you want."
        )

    def _check_noise_shape_rank(self, input_shape):
        if self.noise_shape is not None and len(self.noise_shape) != len(
            input_shape
        ):
            fail(
                "noise_shape",
                f"a tuple of length {len(input_shape)} (the input rank)",
                self.noise_shape,
            )

    def shares_mask_over_batch(self):
        """Whether one mask is drawn for the whole batch (batch size 1)."""
        return self.noise_shape is not None and self.noise_shape[0] == 1

    def _mask_shape(self, inputs):
        if self.noise_shape is None:
            return None
        shape = ops.shape(inputs)
        return tuple(
            shape[i] if d is None else d for i, d in enumerate(self.noise_shape)
        )

    def call(self, inputs, training=None):
        check_input_dtype("MCDropout", inputs)
        self._check_noise_shape_rank(inputs.shape)
        if self.rate == 0.0:
            return inputs
        return keras.random.dropout(
            inputs,
            self.rate,
            noise_shape=self._mask_shape(inputs),
            seed=draw_seed(self),
        )

    def _check_symbolic(self, inputs):
        self._check_noise_shape_rank(inputs.shape)
