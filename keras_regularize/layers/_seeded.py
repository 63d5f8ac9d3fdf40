"""What every random layer of the package shares, written once."""

import keras

from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_seed


class Seeded:
    """Mixin for layers that draw random numbers and keep their input shape.

    Put it before the Keras base class (`class X(Seeded, keras.layers.Layer)`)
    and list the constructor arguments that `get_config` returns in
    `CONFIG`. It provides:

    - `_seed(seed)`: checks `seed` and creates the layer's
      `keras.random.SeedGenerator` (call it where the constructor created it
      before, so the variable order of saved files stays the same);
    - `compute_output_spec`: refuses integer and bool inputs when a model is
      built symbolically, as `call` does at run time;
    - `compute_output_shape`: the input shape;
    - `get_config`: the base config plus each name in `CONFIG`.
    """

    CONFIG = ()

    def _seed(self, seed):
        self.seed = check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Symbolic calls (`keras.Input(..., dtype="int32")`) refuse integer
        # inputs too, when the model is built rather than at its first step.
        check_input_dtype(type(self).__name__, inputs)
        return super().compute_output_spec(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self.CONFIG})
        return config
