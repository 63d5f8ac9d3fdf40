"""What every random layer of the package shares, written once."""

import keras

from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_seed


def add_seed_generator(owner, seed):
    """Checks `seed`, then gives `owner` its `seed` and `seed_generator`.

    Every random draw of the package goes through the generator created
    here. Call it where the constructor created the generator before, so
    the variable order of saved files stays the same.
    """
    owner.seed = check_seed("seed", seed)
    owner.seed_generator = keras.random.SeedGenerator(owner.seed)


class Seeded:
    """Mixin for layers that draw random numbers and keep their input shape.

    Put it before the Keras base class (`class X(Seeded, keras.layers.Layer)`)
    and list the constructor arguments that `get_config` returns in
    `CONFIG`. It provides:

    - `compute_output_spec`: refuses integer and bool inputs when a model is
      built symbolically, as `call` does at run time, then runs the
      subclass's `_check_symbolic(inputs)`;
    - `compute_output_shape`: the input shape;
    - `get_config`: the base config plus each name in `CONFIG`.
    """

    CONFIG = ()

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Symbolic calls (`keras.Input(..., dtype="int32")`) refuse integer
        # inputs too, when the model is built rather than at its first step.
        check_input_dtype(type(self).__name__, inputs)
        self._check_symbolic(inputs)
        return super().compute_output_spec(inputs, *args, **kwargs)

    def _check_symbolic(self, inputs):
        """Further checks of symbolic inputs, before the symbolic call."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self.CONFIG})
        return config
