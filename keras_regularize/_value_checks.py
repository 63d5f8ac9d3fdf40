"""Checks on tensor values: an error where values can be read, else a flag.

Shape and argument checks happen on the host before any work; checks on
data (class ids in range, targets in `[0, 1]`) can raise only where the
values exist. `require` is the one mechanism for those: a `ValueError`
naming the first bad value in eager code, an assertion carrying the same
message in TensorFlow graphs (`tf.function`, `tf.data`), and nothing inside
traced JAX or XLA steps, where the callers turn the affected results into
NaN so that bad data never yields a finite, plausible number.
"""

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend
from keras_regularize._validation import fail


def values_known(x):
    """Whether the host can read the values of `x` now (not traced)."""
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    return _backend.is_concrete_tensor(x)


def raise_first_invalid(valid, values, name, expected):
    """`fail(name, expected, v)` for the first `v` of `values` not valid."""
    ok = np.asarray(ops.convert_to_numpy(valid)).astype(bool)
    if ok.all():
        return
    bad = np.broadcast_to(np.asarray(ops.convert_to_numpy(values)), ok.shape)
    fail(name, expected, bad[~ok].flat[0].item())


def require(valid, values, name, expected, guard=None):
    """Raises for the first entry of `values` where `valid` is False.

    Returns `guard`; in a TensorFlow graph, `guard` made to wait for the
    assertion, so that ops using it (a loss that would fail on the same
    values) run after the check. Traced JAX and XLA code cannot raise on
    data: there `guard` comes back unchanged and the caller must give NaN
    where `valid` is False.
    """
    if values_known(valid):
        raise_first_invalid(valid, values, name, expected)
        return guard
    return _backend.assert_in_graph(valid, values, name, expected, guard)
