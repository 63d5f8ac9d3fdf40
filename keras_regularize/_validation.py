"""Argument checks with one message shape: argument name and value received."""

import math
import numbers


def _fail(name, expected, value):
    raise ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


def check_number(
    name, value, low=None, high=None, low_open=False, high_open=False
):
    """Checks that `value` is a real number in the given interval."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    expected = f"a number in {left}{lo}, {hi}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(name, expected, value)
    v = float(value)
    if math.isnan(v):
        _fail(name, expected, value)
    if low is not None and (v < low or (low_open and v == low)):
        _fail(name, expected, value)
    if high is not None and (v > high or (high_open and v == high)):
        _fail(name, expected, value)
    return v


def check_rate(name, value):
    """Checks a drop probability: a float in `[0, 1)`."""
    return check_number(name, value, 0.0, 1.0, high_open=True)


def check_int(name, value, low=None):
    """Checks that `value` is an integer, at least `low` when given."""
    expected = "an integer" + ("" if low is None else f" >= {low}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(name, expected, value)
    if low is not None and value < low:
        _fail(name, expected, value)
    return int(value)


def check_choice(name, value, choices):
    """Checks that `value` is one of `choices`."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        _fail(name, f"one of {options}", value)
    return value


def check_seed(name, value):
    """Checks a seed: `None` or a non-negative integer."""
    if value is None:
        return None
    return check_int(name, value, 0)
