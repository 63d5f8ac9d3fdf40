"""The named techniques of `ablation`: what each one changes in a `Trial`.

A named technique is `"name"` (its default setting) or `"name=value"` (one
number, its main setting). Each maps to one of our components (or to a
Keras argument) and changes the run through the `Trial` protocol, like a
user-supplied technique; the architectural ones (`"dropout"`,
`"stochastic_depth"`) are passed to `build_model` as keyword arguments,
because only the user's builder knows where such layers go.
"""

import math

import keras
import numpy as np

from keras_regularize._layer_walk import walk_layers
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import check_rate
from keras_regularize._validation import fail


def _positive(name, value):
    return check_number(name, value, 0.0, low_open=True)


def _fraction(name, value):
    return check_number(name, value, 0.0, 1.0, high_open=True)


def _patience(name, value):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_int(name, value, 1)


class Named:
    """One registry entry: a name, its main setting and what it changes."""

    def __init__(self, name, default, check, label, apply=None, build=False):
        self.name = name
        self.default = default
        self.check = check
        self.label = label
        self._apply = apply
        # Architectural: passed to `build_model` as `name=value`.
        self.build_kwarg = name if build else None

    def apply(self, trial, value):
        if self._apply is not None:
            self._apply(trial, value)


def _has_layer(network, predicate):
    return any(predicate(layer) for layer in walk_layers(network))


def _is_dropout(layer):
    rate = getattr(layer, "rate", None)
    return isinstance(layer, keras.layers.Dropout) or (
        "Dropout" in type(layer).__name__ and rate is not None
    )


def _is_stochastic_depth(layer):
    names = ("StochasticDepth", "StochasticResidual", "DropPath")
    return any(n in type(layer).__name__ for n in names)


def _optimizer_with(optimizer, **changes):
    optimizer = keras.optimizers.get(optimizer)
    return type(optimizer).from_config({**optimizer.get_config(), **changes})


def units_at_cap(network):
    """Share of the units under a `MaxNorm` whose norm sits on its cap."""
    from keras_regularize.constraints import MaxNorm

    at_cap = units = 0
    for variable in network.trainable_variables:
        constraint = getattr(variable, "constraint", None)
        if not isinstance(constraint, MaxNorm):
            continue
        w = keras.ops.convert_to_numpy(variable).astype("float64")
        if constraint.axis is None:
            axes = tuple(range(w.ndim - 1))
        elif isinstance(constraint.axis, int):
            axes = (constraint.axis,)
        else:
            axes = tuple(constraint.axis)
        norms = np.sqrt(np.sum(np.square(w), axis=axes))
        at_cap += int(np.sum(norms >= 0.99 * constraint.max_value))
        units += norms.size
    return at_cap / units if units else math.nan


def _apply_max_norm(trial, value):
    from keras_regularize.constraints import apply_max_norm

    apply_max_norm(trial.network, value)
    trial.measures["units at cap"] = units_at_cap


def _apply_weight_decay(trial, value):
    args = trial.compile_args
    args["optimizer"] = _optimizer_with(args["optimizer"], weight_decay=value)


def _apply_label_smoothing(trial, value):
    loss = trial.compile_args["loss"]
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    if "label_smoothing" not in config:
        fail(
            "techniques",
            '"label_smoothing" with a loss that has a `label_smoothing` '
            "argument (the default loss has)",
            loss,
        )
    trial.compile_args["loss"] = type(loss).from_config(
        {**config, "label_smoothing": value}
    )


def _apply_early_stopping(trial, value):
    from keras_regularize.callbacks import EarlyStoppingRestore

    trial.fit_args["callbacks"].append(
        EarlyStoppingRestore(monitor="val_loss", patience=int(value))
    )


def _apply_ema(trial, value):
    from keras_regularize.callbacks import ExponentialMovingAverage

    trial.fit_args["callbacks"].append(
        ExponentialMovingAverage(decay=value, evaluate=False)
    )


def _apply_swa(trial, value):
    from keras_regularize.callbacks import StochasticWeightAveraging

    epochs = trial.fit_args["epochs"]
    start = min(epochs - 1, int(math.floor(value * epochs)))
    trial.fit_args["callbacks"].append(
        StochasticWeightAveraging(
            start_epoch=start,
            recalibration_data=trial.data[0],
            evaluate=False,
        )
    )


def _apply_mixup(trial, value):
    from keras_regularize.layers import MixupLayer
    from keras_regularize.models import MixingModel

    mixer = MixupLayer(alpha=value, seed=trial.seed)
    trial.model = MixingModel(trial.model, mixer)


def _apply_drop_path(trial, value):
    from keras_regularize.models import add_regularization

    network, report = add_regularization(
        trial.network, drop_path=value, seed=trial.seed
    )
    # The linear schedule gives the first merge rate 0: a model with one
    # merge would train exactly as "none" does.
    if not any(rate > 0 for rate in report.rates):
        fail(
            "techniques",
            '"drop_path" on a model with at least two residual merges (the '
            "linear schedule gives the first one rate 0); this model has "
            f"{len(report.merges)}",
            trial.network.name,
        )
    trial.network = trial.model = network


def _apply_sam(trial, value):
    from keras_regularize.models import SharpnessAwareMinimization

    trial.model = SharpnessAwareMinimization(trial.model, rho=value)


# Registry order is application order: changes to the network first, then
# the optimizer and loss, callbacks, and the wrappers last (SAM outermost).
REGISTRY = {
    entry.name: entry
    for entry in (
        Named("dropout", 0.5, check_rate, "dropout {:g}", build=True),
        Named(
            "stochastic_depth",
            0.2,
            check_rate,
            "stochastic depth, drop rate {:g}",
            build=True,
        ),
        Named(
            "drop_path",
            0.2,
            check_rate,
            "drop path up to {:g} via add_regularization",
            _apply_drop_path,
        ),
        Named(
            "max_norm",
            3.0,
            _positive,
            "MaxNorm({:g}) on every kernel",
            _apply_max_norm,
        ),
        Named(
            "weight_decay",
            1e-2,
            _positive,
            "decoupled weight decay {:g}",
            _apply_weight_decay,
        ),
        Named(
            "label_smoothing",
            0.1,
            _fraction,
            "label smoothing {:g}",
            _apply_label_smoothing,
        ),
        Named(
            "early_stopping",
            10,
            _patience,
            "EarlyStoppingRestore on val_loss, patience {:g}",
            _apply_early_stopping,
        ),
        Named("ema", 0.999, _fraction, "weight EMA, decay {:g}", _apply_ema),
        Named(
            "swa", 0.75, _fraction, "SWA from {:.0%} of the epochs", _apply_swa
        ),
        Named("mixup", 0.2, _positive, "MixUp, alpha {:g}", _apply_mixup),
        Named("sam", 0.05, _positive, "SAM, rho {:g}", _apply_sam),
    )
}
NAMES = tuple(REGISTRY)


class Part:
    """One component of a row: a named technique and value, or a callable."""

    def __init__(self, entry=None, value=None, function=None):
        self.entry = entry
        self.value = value
        self.function = function

    @property
    def name(self):
        if self.entry is not None:
            return self.entry.name
        return getattr(self.function, "__name__", repr(self.function))

    @property
    def label(self):
        if self.entry is not None:
            return self.entry.label.format(self.value)
        return f"{self.name} (user technique)"

    def apply(self, trial):
        if self.entry is not None:
            self.entry.apply(trial, self.value)
        else:
            self.function(trial)


def parse_part(spec, argument="techniques"):
    """`"name"`, `"name=value"` or a callable -> a `Part`."""
    if callable(spec) and not isinstance(spec, str):
        return Part(function=spec)
    if not isinstance(spec, str):
        fail(
            argument,
            "technique names (strings such as 'dropout' or 'dropout=0.3') "
            "or functions of a `Trial`",
            spec,
        )
    name, _, text = spec.partition("=")
    name = name.strip()
    if name not in REGISTRY:
        fail(
            argument,
            f"known technique names ({', '.join(NAMES)}), optionally with "
            "'=value', or functions of a `Trial`",
            spec,
        )
    entry = REGISTRY[name]
    if not text:
        return Part(entry, entry.default)
    try:
        value = float(text)
    except ValueError:
        value = text
    return Part(entry, entry.check(f"{argument}[{name!r}]", value))


def parse_row(spec, argument="techniques"):
    """A row's spec (one part, or a list or tuple of parts) -> parts."""
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        fail(argument, "at least one technique in each combination", spec)
    parts = [parse_part(s, argument) for s in specs]
    seen = [p.entry.name for p in parts if p.entry is not None]
    if len(seen) != len(set(seen)):
        fail(argument, "each named technique once per row", spec)
    # Named parts in registry order, user functions after them as given.
    named = sorted(
        (p for p in parts if p.entry is not None),
        key=lambda p: NAMES.index(p.entry.name),
    )
    return named + [p for p in parts if p.entry is None]


def build_kwargs(parts):
    """Keyword arguments of `build_model` the row's parts ask for."""
    return {
        p.entry.build_kwarg: p.value
        for p in parts
        if p.entry is not None and p.entry.build_kwarg
    }


def check_built(parts, network):
    """Refuses a network that ignored an architectural technique."""
    checks = {"dropout": _is_dropout, "stochastic_depth": _is_stochastic_depth}
    for part in parts:
        if part.entry is None or part.entry.name not in checks:
            continue
        if part.value > 0 and not _has_layer(network, checks[part.name]):
            fail(
                "build_model",
                f"a model with a layer that applies `{part.name}` when "
                f"called with {part.name}={part.value:g}",
                f"a model {network.name!r} without one",
            )
