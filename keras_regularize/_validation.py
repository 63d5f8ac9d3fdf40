"""Argument checks with one message shape: argument name and value received.

Every check raises `ValueError("Invalid value received for argument `name`.
Expected .... Received: name=<repr>")`, the message shape of Keras's own
layers, so the error names the argument and the value at once.
"""

import math
import numbers

import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")


def fail(name, expected, value):
    """Raises the package's one argument error for `name`."""
    raise ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def fail_shape(name, expected, shape):
    """Raises the package's one input-shape error for tensor `name`.

    `expected` says what shape was wanted ("a rank-4 tensor (batch, height,
    width, channels)"); `shape` is the received shape, printed as a tuple.
    """
    shape = tuple(None if d is None else int(d) for d in shape)
    raise ValueError(
        f"Invalid shape received for argument `{name}`. Expected {expected}. "
        f"Received: {name}.shape={shape}"
    )


def _describe_range(low, high, low_open, high_open, allow_inf):
    kind = "a number" if allow_inf else "a finite number"
    if low is None and high is None:
        return kind
    if high is None:
        return f"{kind} {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{kind} {'<' if high_open else '<='} {high:g}"
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    return f"a number in {left}{low:g}, {high:g}{right}"


def check_number(
    name,
    value,
    low=None,
    high=None,
    low_open=False,
    high_open=False,
    allow_inf=False,
):
    """Checks that `value` is a real number in the given interval.

    Booleans, strings, `None`, NaN and (unless `allow_inf`) infinities are
    refused. Returns the value as a Python float.
    """
    expected = _describe_range(low, high, low_open, high_open, allow_inf)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # NumPy scalars of a real dtype register as numbers.Real; 0-d arrays
        # and tensors do not, and are refused rather than guessed at.
        fail(name, expected, value)
    if isinstance(value, np.bool_):
        fail(name, expected, value)
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        fail(name, expected, value)
    if low is not None and (v < low or (low_open and v == low)):
        fail(name, expected, value)
    if high is not None and (v > high or (high_open and v == high)):
        fail(name, expected, value)
    return v


def check_nonnegative(name, value):
    """A finite float `>= 0`; the argument error otherwise."""
    return check_number(name, value, low=0.0)


def check_rate(name, value):
    """Checks a drop probability: a float in `[0, 1)`."""
    return check_number(name, value, 0.0, 1.0, high_open=True)


def check_int(name, value, low=None, high=None):
    """Checks that `value` is an integer in `[low, high]` where given."""
    if low is not None and high is not None:
        expected = f"an integer in [{low}, {high}]"
    elif low is not None:
        expected = f"an integer >= {low}"
    elif high is not None:
        expected = f"an integer <= {high}"
    else:
        expected = "an integer"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, expected, value)
    if low is not None and value < low:
        fail(name, expected, value)
    if high is not None and value > high:
        fail(name, expected, value)
    return int(value)


def check_bool(name, value):
    """Checks a flag: a Python (or NumPy) bool, never a truthy stand-in."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    fail(name, "a bool (True or False)", value)


def check_choice(name, value, choices):
    """Checks that `value` is one of `choices`, with matching type.

    `True == 1` in Python, so a bool is only accepted where the choices
    hold bools.
    """
    options = ", ".join(repr(c) for c in choices)
    for choice in choices:
        if isinstance(value, bool) != isinstance(choice, bool):
            continue
        if isinstance(value, str) != isinstance(choice, str):
            continue
        try:
            if value == choice:
                return choice
        except (TypeError, ValueError):
            continue
    fail(name, f"one of {options}", value)


def check_data_format(name, value):
    """`None` (Keras's configured image data format) or one of the two."""
    if value is None:
        import keras

        return keras.config.image_data_format()
    return check_choice(name, value, DATA_FORMATS)


def check_seed(name, value):
    """Checks a seed: `None` or a non-negative integer."""
    if value is None:
        return None
    return check_int(name, value, 0)


def check_input_dtype(layer_name, inputs, argument="inputs"):
    """Refuses integer and bool inputs to a layer that rescales floats.

    Casting silently would truncate rescale factors or overflow; the user
    should cast to a float dtype on purpose.
    """
    dtype = str(getattr(inputs, "dtype", "float32"))
    dtype = dtype.replace("torch.", "").replace("<dtype: '", "").rstrip("'>")
    if "float" not in dtype:
        raise ValueError(
            f"Invalid input received for `{layer_name}`. Expected `{argument}` "
            f"of a floating-point dtype. Received: {argument} with "
            f"dtype={dtype}. Cast integer data to float first, e.g. with "
            "`keras.ops.cast(x, 'float32')` or a `Rescaling` layer."
        )
