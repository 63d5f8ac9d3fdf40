"""Drop rates held in non-trainable variables, so schedules survive jit."""

import keras

from keras_regularize._validation import check_rate
from keras_regularize._variables import add_scalar


class RateLayer(keras.layers.Layer):
    """Base for layers whose drop `rate` may change while training.

    The rate lives in a float32 non-trainable variable, `rate_variable`. A
    callback sets it with `layer.rate = 0.3` (validated, then `.assign`), and
    compiled training steps on every backend read the new value, where a
    Python float would have been frozen into the compiled graph.
    """

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        rate = check_rate("rate", rate)
        self.rate_variable = add_scalar(self, "rate", rate)
        # Mirrors the variable on the host so `get_config` needs no device
        # read; kept in sync by the setter.
        self._rate_value = rate

    @property
    def rate(self):
        """The current drop probability, as a Python float."""
        return self._rate_value

    @rate.setter
    def rate(self, value):
        value = check_rate("rate", value)
        self.rate_variable.assign(value)
        self._rate_value = value

    def _keep_prob(self):
        """`1 - rate` as a float32 tensor read from the variable."""
        rate = keras.ops.convert_to_tensor(self.rate_variable, "float32")
        return 1.0 - rate
