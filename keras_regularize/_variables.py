"""Run-time settings held in non-trainable float32 scalar variables."""

import keras


def add_scalar(layer, name, value):
    """Adds a non-trainable float32 scalar weight named `name` to `layer`.

    Compiled steps read the variable, so a callback that assigns a new value
    changes training at once, where a Python float would be frozen into the
    compiled graph. `autocast=False` keeps it float32 under mixed precision.
    """
    return layer.add_weight(
        shape=(),
        initializer=keras.initializers.Constant(value),
        trainable=False,
        dtype="float32",
        autocast=False,
        name=name,
    )
