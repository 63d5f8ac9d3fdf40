"""Drop rates held in non-trainable variables, so schedules survive jit."""

import keras

from keras_regularize._validation import check_rate
from keras_regularize._variables import ScalarVariable
from keras_regularize._variables import read_scalar


class RateLayer(keras.layers.Layer):
    """Base for layers whose drop `rate` may change while training.

    The rate lives in a float32 non-trainable variable, `rate_variable`. A
    callback sets it with `layer.rate = 0.3` (validated, then `.assign`), and
    compiled training steps on every backend read the new value, where a
    Python float would have been frozen into the compiled graph.
    """

    rate = ScalarVariable(
        check_rate, "The current drop probability, as a Python float."
    )

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def _keep_prob(self):
        """`1 - rate` as a float32 tensor read from the variable."""
        return 1.0 - read_scalar(self, "rate")
