"""Helpers shared by the engine cases in `tests/distributed/_cases_*.py`."""

import keras
import numpy as np


def to_float64(value):
    """A variable's or tensor's value as a float64 NumPy array."""
    return np.array(keras.ops.convert_to_numpy(value), dtype="float64")


def device_count(variable):
    """How many devices hold a copy of `variable` (JAX sharding, or a
    `tf.distribute` variable's per-replica values)."""
    value = variable.value
    sharding = getattr(value, "sharding", None)
    if sharding is not None and hasattr(sharding, "device_set"):
        return len(sharding.device_set)
    return len(getattr(value, "values", [value]))
