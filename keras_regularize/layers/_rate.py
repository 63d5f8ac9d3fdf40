"""Drop rates held in non-trainable variables, so schedules survive jit."""

import keras

from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_rate
from keras_regularize._variables import ScalarVariable
from keras_regularize._variables import read_scalar
from keras_regularize.layers._seeded import Seeded
from keras_regularize.layers._seeded import add_seed_generator


class RateLayer(Seeded, keras.layers.Layer):
    """Base for random layers whose drop `rate` may change while training.

    The rate lives in a float32 non-trainable variable, `rate_variable`. A
    callback sets it with `layer.rate = 0.3` (validated, then `.assign`), and
    compiled training steps on every backend read the new value, where a
    Python float would have been frozen into the compiled graph. The rate
    variable is created first and the seed generator second, the order of
    every saved file.
    """

    CONFIG = ("rate", "seed")

    rate = ScalarVariable(
        check_rate, "The current drop probability, as a Python float."
    )

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        add_seed_generator(self, seed)

    def _keep_prob(self):
        """`1 - rate` as a float32 tensor read from the variable."""
        return 1.0 - read_scalar(self, "rate")


class BranchDropLayer(RateLayer):
    """Base for layers that drop a residual branch: `mode`, `scale_by_keep`.

    Subclasses name their allowed modes in `MODES`.
    """

    MODES = ()
    CONFIG = ("rate", "mode", "scale_by_keep", "seed")

    def __init__(self, rate, mode, scale_by_keep, seed=None, **kwargs):
        super().__init__(rate, seed, **kwargs)
        self.mode = check_choice("mode", mode, self.MODES)
        self.scale_by_keep = check_bool("scale_by_keep", scale_by_keep)
