"""The learning rate of stochastic weight averaging (torch's `SWALR`).

From `start_epoch` on, the learning rate of epoch `e` is

    lr_e = swa_lr * a(t) + lr_start * (1 - a(t)),
    t = min(1, (e - start_epoch) / anneal_epochs)   (t = 1 if anneal_epochs=0)

with `a(t) = (1 - cos(pi * t)) / 2` (`"cos"`) or `a(t) = t` (`"linear"`),
and `lr_start` the optimizer's learning rate when epoch `start_epoch`
begins. So `start_epoch` itself trains at `lr_start` unless
`anneal_epochs=0`, and `swa_lr` is reached at epoch
`start_epoch + anneal_epochs` and held from then on: torch's `SWALR` stepped
once per epoch from the first averaged epoch.

The rate is always changed by assigning a variable, never by rebuilding
the training step:

- a float learning rate is a variable of the optimizer already
  (`optimizer.learning_rate = value` assigns it);
- a `LearningRateSchedule` (or a callable) cannot be assigned, so while
  `fit` runs it is wrapped in `OverridableSchedule`, which follows the
  schedule until `start_epoch` and then returns the value of a variable
  that the callback sets at each epoch. The wrapper and its two variables
  are put on the innermost optimizer before `fit` builds its training
  step, and taken off when training ends: the optimizer then holds its
  original schedule again (its config, saved files and later training are
  as before), and its variables are what they were.
"""

import math

import keras
from keras import ops

from keras_regularize import _backend
from keras_regularize.callbacks._averaging import _innermost

_Schedule = keras.optimizers.schedules.LearningRateSchedule

ANNEAL_STRATEGIES = ("cos", "linear")

# Attribute of a wrapped optimizer pointing at its wrapper (private to the
# package, like every attribute we store on a user's object).
_ATTRIBUTE = "_keras_regularize_swa_schedule"


def anneal_weight(epoch, start_epoch, anneal_epochs, strategy):
    """`a(t)` of the module docstring for `epoch` (0 before `start_epoch`)."""
    if epoch < start_epoch:
        return 0.0
    if anneal_epochs == 0:
        return 1.0
    t = min(1.0, (epoch - start_epoch) / anneal_epochs)
    if strategy == "cos":
        return (1.0 - math.cos(math.pi * t)) / 2.0
    return t


def swa_learning_rate(
    epoch, start_epoch, lr_start, swa_lr, anneal_epochs, strategy
):
    """The learning rate of `epoch` (module docstring); a Python float."""
    a = anneal_weight(epoch, start_epoch, anneal_epochs, strategy)
    if a == 1.0:
        return float(swa_lr)
    return float(swa_lr * a + lr_start * (1.0 - a))


def _scalar(name, value):
    return keras.Variable(
        value,
        shape=(),
        dtype="float32",
        trainable=False,
        aggregation="only_first_replica",
        name=name,
    )


class OverridableSchedule(_Schedule):
    """`schedule(step)`, or the value of `value` while `active` is nonzero.

    Not serializable on purpose: it only lives on an optimizer while `fit`
    runs, and `get_config` returns the wrapped schedule's config.
    """

    def __init__(self, schedule, active, value):
        self.schedule = schedule
        self.active = active
        self.value = value

    def __call__(self, step):
        if isinstance(self.schedule, _Schedule):
            base = self.schedule(step)
        else:
            base = self.schedule()
        base = ops.convert_to_tensor(base)
        dtype = base.dtype
        on = ops.greater(ops.convert_to_tensor(self.active), 0.5)
        return ops.where(on, ops.cast(self.value, dtype), base)

    def get_config(self):
        return keras.optimizers.schedules.serialize(self.schedule)


class LearningRateControl:
    """Reads and sets a model's learning rate, whatever its kind.

    `install(model)` before `fit` builds the training step (from
    `set_model`), `set(value)` at each epoch, `remove()` when training
    ends.
    """

    def __init__(self):
        self.optimizer = None  # the innermost optimizer
        self.wrapper = None  # the OverridableSchedule, while installed
        self.original = None  # the schedule it wraps
        self._model = None

    @property
    def is_schedule(self):
        return self.wrapper is not None

    def install(self, model):
        """Wraps a schedule learning rate; a no-op for a float one.

        Returns whether the model's training step must be rebuilt (a new
        wrapper on an optimizer whose step was already built).
        """
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            return False
        inner = _innermost(optimizer)
        if self.optimizer is inner and self.wrapper is not None:
            return False
        self.remove()
        self.optimizer, self._model = inner, model
        rate = getattr(inner, "_learning_rate", None)
        if isinstance(rate, keras.Variable) or not callable(rate):
            return False
        with _backend.variable_scope(model):
            active = _scalar("swa_lr_active", 0.0)
            value = _scalar("swa_lr_value", 0.0)
        self.original = rate
        self.wrapper = OverridableSchedule(rate, active, value)
        inner.learning_rate = self.wrapper
        # Tracked, so stateless (JAX) steps carry them as optimizer state.
        inner._track_variable(active)
        inner._track_variable(value)
        return True

    def current(self):
        """The learning rate the next step would use (a Python float)."""
        optimizer = self.optimizer
        if optimizer is None:
            optimizer = _innermost(self._model.optimizer)
        return float(ops.convert_to_numpy(optimizer.learning_rate))

    def set(self, value):
        if self.wrapper is not None:
            self.wrapper.value.assign(value)
            self.wrapper.active.assign(1.0)
        else:
            self.optimizer.learning_rate = value

    def remove(self):
        """Puts the original schedule back; returns whether it did."""
        wrapper, optimizer = self.wrapper, self.optimizer
        self.wrapper = None
        if wrapper is None:
            return False
        mine = {id(wrapper.active), id(wrapper.value)}
        optimizer._variables[:] = [
            v for v in optimizer._variables if id(v) not in mine
        ]
        optimizer.learning_rate = self.original
        self.original = None
        return True
