"""Which way a monitored quantity should go, and its logged value."""

import re

import keras
import numpy as np

from keras_regularize._validation import fail

# Endings of a monitored name (after `val_`) that are always minimized under
# `mode="auto"`: losses and error metrics. Any other name takes the
# direction of the model's metric of that name, or needs an explicit mode.
MIN_SUFFIXES = (
    "loss",
    "error",
    "crossentropy",
    "hinge",
    "divergence",
    "mae",
    "mse",
    "rmse",
    "msle",
    "mape",
    "kld",
    "logcosh",
    "log_cosh",
    "poisson",
    "nll",
    "perplexity",
)


def name_direction(monitor):
    """`"min"` for names ending in a loss or error suffix, else `None`."""
    name = monitor.lower().removeprefix("val_")
    return "min" if name.endswith(MIN_SUFFIXES) else None


def leaf_metrics(model):
    """The model's metric objects, with containers flattened.

    Returns `(leaves, pending)`; `pending` is true while a container (the
    compiled metrics) is not built yet and so cannot list its metrics.
    """
    leaves, pending, seen = [], False, set()
    stack = list(getattr(model, "metrics", None) or [])
    while stack:
        metric = stack.pop()
        if id(metric) in seen:
            continue
        seen.add(id(metric))
        children = getattr(metric, "metrics", None)
        if isinstance(children, (list, tuple)):
            if getattr(metric, "built", True) is False:
                pending = True
            stack.extend(children)
        else:
            leaves.append(metric)
    return leaves, pending


def _logged_names(metric_name, output_names):
    # The keys under which Keras logs a compiled metric: its name, with an
    # output-name prefix for multi-output models and `weighted_` for
    # `weighted_metrics` that share a name.
    names = {metric_name, f"weighted_{metric_name}"}
    for output in output_names:
        names.add(f"{output}_{metric_name}")
        names.add(f"{output}_weighted_{metric_name}")
    return names


def metric_direction(model, monitor):
    """Direction of the model's metric logged as `monitor`.

    Returns `("min" | "max" | None, pending)`: `None` when no metric of that
    name has a known direction (`_direction`, which Keras's own callbacks
    read), or when metrics of that name disagree.
    """
    leaves, pending = leaf_metrics(model)
    outputs = [str(o) for o in (getattr(model, "output_names", None) or [])]
    target = monitor.removeprefix("val_")
    targets = [target]
    indexed = re.fullmatch(r"(.+)_\d+", target)
    if indexed:  # a repeated name gets `_1`, `_2`, ... appended
        targets.append(indexed.group(1))
    for name in targets:
        matches = [
            m
            for m in leaves
            if isinstance(getattr(m, "name", None), str)
            and name in _logged_names(m.name, outputs)
        ]
        if matches:
            directions = {getattr(m, "_direction", None) for m in matches}
            if directions == {"up"}:
                return "max", pending
            if directions == {"down"}:
                return "min", pending
            return None, pending
    return None, pending


def auto_direction(model, monitor, mode, final):
    """The direction `mode="auto"` takes for `monitor` on `model`.

    Returns `"min"` or `"max"`, or `None` while the compiled metrics are not
    built yet and `final` is false (they are built by the first train step).
    Raises a `ValueError` about `mode` when no direction can be known.
    """
    direction, pending = metric_direction(model, monitor)
    if direction is None and pending and not final:
        return None
    if direction is None:
        fail(
            "mode",
            "'min' or 'max' for this monitor: `mode='auto'` cannot tell "
            f"whether monitor={monitor!r} should be minimized or "
            "maximized: its name does not end in `loss` or an error "
            "suffix (`mae`, `mse`, `error`, `crossentropy`, `hinge`, "
            "...), and the model has no metric of that name with a "
            "known direction",
            mode,
        )
    return direction


def scalar(monitor, value):
    """The logged value as a Python float; size-1 arrays give their item."""
    if keras.ops.is_tensor(value):
        value = keras.ops.convert_to_numpy(value)
    try:
        array = np.asarray(value, dtype="float64")
    except (TypeError, ValueError):
        raise ValueError(
            f"EarlyStoppingRestore is monitoring `{monitor}`, whose logged "
            f"value is not a number. Received: {monitor}={value!r}"
        ) from None
    if array.size != 1:
        raise ValueError(
            f"EarlyStoppingRestore is monitoring `{monitor}`, which logs an "
            f"array of shape {array.shape}; it needs one number per epoch. "
            "Monitor a scalar metric instead (e.g. "
            "`keras.metrics.F1Score(average='macro')`)."
        )
    return float(array.reshape(()))
