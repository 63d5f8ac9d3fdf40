"""Shared machinery of the weight-averaging callbacks (EMA and SWA).

`WeightAveraging` is the base of `ExponentialMovingAverage` and
`StochasticWeightAveraging`. It owns everything the two share; a subclass
sets two class attributes and implements how the average moves.

Which variables are averaged (the rule, the same for every subclass):

- the model's trainable variables (`model.trainable_variables`), except
  those with `overwrite_with_gradient` (float8 scales), which are state,
  not weights. Under `Distiller` only the student is trainable, so only the
  student is averaged; the frozen teachers are left alone.
- Non-trainable state is never averaged: batch-norm moving statistics,
  keras_regularize's hyperparameter scalars (drop rates), integer
  variables (seed generator states, counters) and frozen layers keep the
  raw model's current value when the averaged weights are swapped in. A
  subclass may recompute some of it for the averaged weights in
  `_after_swap_in` (SWA recalibrates batch-norm statistics there); the
  values it leaves are remembered as part of the averaged model (see
  `averaged_weights`).

Averages are float32 `keras.Variable`s whatever the dtype policy, created
with the layout (JAX sharding) of the variable they mirror, inside the
model's distribution scope (`_backend.variable_scope`), with
`aggregation="only_first_replica"` so a replica-context update under
`tf.distribute` is legal. `self._count` is an int32 variable beside them
(EMA: optimizer steps averaged; SWA: epochs averaged).

Subclass interface:

- `prefix` (class attribute): `"ema"` or `"swa"`; names the logged keys
  (`val_<prefix>_loss`, ...) and the variables.
- `in_step` (class attribute): when `True`, the averages and the count are
  attached to the innermost optimizer (followed through `inner_optimizer`:
  `LossScaleOptimizer`, `GradientClipping`, ...) while `fit` runs, so every
  trainer, JAX's stateless one included, threads them through the compiled
  step; and the optimizer's `apply` is wrapped so `_in_step_update(stepped)`
  runs right after every update, inside the step. `stepped` is `None` when
  every call is a step, else a boolean scalar tensor (gradient
  accumulation: only every k-th call updates the weights). Attaching
  happens in `set_model` (before `fit` builds its train function) and
  undoing it when training ends; `model.train_function` is reset both times
  so no compiled step runs with a stale set of variables.
- `_in_step_update(stepped)`: required when `in_step`; uses only
  `keras.ops` on `self._sources` (model variables), `self._averages`
  (float32 variables, same order) and `self._count`.
- `_start()`: called at `on_train_begin` after the average was (re)started
  from the weights or restored by `set_state`; reset per-fit counters here.
- `_ready()`: whether an average exists to evaluate or to put in place
  (default: `True`; SWA returns `False` before `start_epoch`). While false,
  no `val_<prefix>_*` keys are logged and `final="averaged"` keeps the raw
  weights.
- `_before_validation()`: runs when `fit` starts an epoch's validation
  (`evaluate=True`), before the raw evaluation and before `_ready()` is
  asked (SWA adds the epoch's weights to its average there, so the
  averaged evaluation of epoch `e` includes epoch `e`).
- `_after_swap_in()`: runs right after the averaged weights are swapped
  in, before the averaged evaluation and before the final swap (not
  before a checkpoint or an `EarlyStoppingRestore` capture, which reuse the
  state it left at the last averaged evaluation).
- `_extra_state()` / `_load_extra_state(state)`: more entries for
  `get_state()` / `set_state()` (plain Python or NumPy values).
- Helpers: `self._restart_average()` (average := current weights, count
  := 0), `self._assign_average(values, count)`, `self._read_count()`,
  `self._swap_in(run_hook)`, `self._swap_out()`, `self._averaged_in_place`.

Side-by-side evaluation: while `fit` runs (`evaluate=True`), the model's
`evaluate` is wrapped. The call `fit` makes for validation (it passes
`_use_cached_eval_dataset=True`) runs as usual, then once more under the
averaged weights with no callbacks and `verbose=0`, so `on_test_*` hooks
see one evaluation per epoch; the result gets `<prefix>_<name>` entries
beside the raw ones, and `fit` turns them into `val_<prefix>_<name>`
before any callback's `on_epoch_end`. The raw weights are back before
`evaluate` returns. The order of callbacks therefore does not matter.

`EarlyStoppingRestore` interplay (`averaged_context`, `finish_averaging`):
an `EarlyStoppingRestore` monitoring `val_<prefix>_*` captures the
averaged weights at an improvement, and asks the averaging callbacks to
put their final weights in place before it restores its best, so its
restore has the last word whatever the order.

Files: `checkpoint_path` is written at each epoch end with the averaged
weights and the optimizer's own state; `plain_optimizer(model)` hides the
in-step variables from the optimizer meanwhile (`EarlyStoppingRestore`
uses it for its checkpoint too), so such files load into a model trained
without the callback.

Exceptions: Keras calls no hook when `fit` raises. The callback then keeps
its hooks until the next `fit` on the model starts: a guard on
`model.make_train_function` (which every `fit` calls first), a stale
`apply` patch found by another in-step callback, or `set_model` while
still "fitting" call `_abandon()`, which undoes everything (raw weights
kept).

State: `get_state()` returns `{"prefix", "averages": [float32 arrays],
"count": int, **_extra_state()}`; `set_state(state)` makes the next `fit`
continue that average instead of starting a new one.
"""

import contextlib
import weakref

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend
from keras_regularize._backend import sync_model_state
from keras_regularize._checkpoint import BackgroundWriter
from keras_regularize._checkpoint import check_optional_weights_path
from keras_regularize._checkpoint import ensure_writable
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import fail
from keras_regularize.callbacks import _resume
from keras_regularize.callbacks._weight_snapshot import WeightSnapshot

FINALS = ("averaged", "raw")

# model -> {prefix: callback} for the fits running now.
_ACTIVE = weakref.WeakKeyDictionary()
# prefix -> class name of each averaging callback (for messages).
KINDS = {}


def _active(model):
    try:
        return _ACTIVE.get(model, {})
    except TypeError:  # an unhashable model: nothing registered
        return {}


def averaging_for(model, monitor):
    """The averaging callback whose averaged metrics `monitor` names."""
    if not isinstance(monitor, str) or model is None:
        return None
    for prefix, callback in _active(model).items():
        if monitor.startswith(f"val_{prefix}_"):
            return callback
    return None


def averaged_context(model, monitor):
    """Context holding the averaged weights in place if `monitor` is theirs.

    A no-op context when no running averaging callback logs `monitor`.
    """
    callback = averaging_for(model, monitor)
    if callback is None or not callback._ready():
        return contextlib.nullcontext()
    return callback._swapped(run_hook=False)


@contextlib.contextmanager
def plain_optimizer(model):
    """Context hiding running averaging callbacks' optimizer variables.

    For writing a weights file during `fit` that loads into a model trained
    without those callbacks.
    """
    with contextlib.ExitStack() as stack:
        for callback in list(_active(model).values()):
            stack.enter_context(callback._hidden_from_optimizer())
        yield


def averaging_hint(model, monitor):
    """Why `val_<prefix>_*` key `monitor` is missing, or `""`.

    For the message of a callback that monitors a key absent from the logs.
    """
    if not isinstance(monitor, str):
        return ""
    for prefix, kind in KINDS.items():
        if not monitor.startswith(f"val_{prefix}_"):
            continue
        callback = _active(model).get(prefix) if model is not None else None
        if callback is None:
            return (
                f" `val_{prefix}_*` keys come from a {kind} callback, and "
                f"none is in this fit's callbacks: add {kind}(evaluate=True)"
                " to `callbacks` (in any position)."
            )
        return (
            f" The {kind} callback of this fit logs `val_{prefix}_*` keys "
            "only with evaluate=True (it has "
            f"evaluate={callback.evaluate}), on the epochs where `fit` "
            "runs validation (`validation_data` or `validation_split`, "
            "`validation_freq`), and once its average has started."
        )
    return ""


def finish_averaging(model):
    """Puts every running averaging callback's final weights in place now."""
    for callback in list(_active(model).values()):
        callback._finish()


def _innermost(optimizer):
    seen = set()
    while getattr(optimizer, "inner_optimizer", None) is not None:
        if id(optimizer) in seen:
            break
        seen.add(id(optimizer))
        optimizer = optimizer.inner_optimizer
    return optimizer


def _remove(variables, unwanted):
    # By identity and in place (the optimizer's tracker holds this list;
    # `==` on variables compares values).
    unwanted = {id(v) for v in unwanted}
    for i in reversed(range(len(variables))):
        if id(variables[i]) in unwanted:
            del variables[i]


def _fresh(variable, dtype):
    # A new buffer: JAX donates the training state, and two variables
    # sharing one array (a cast to the same dtype returns its input) would
    # donate it twice.
    return ops.copy(ops.cast(variable.value, dtype))


def _numpy(value):
    if _backend.is_tf_tensor(value):
        # A 0-d `tf.distribute` MirroredVariable refuses `np.array`
        # ("__array__ method not producing an array"); `.numpy()` reads it.
        return np.array(value.numpy())
    return np.array(keras.ops.convert_to_numpy(value))


class WeightAveraging(keras.callbacks.Callback):
    """Base of callbacks that keep an average of a model's weights.

    See the module docstring for the subclass interface.

    Args:
        evaluate: Bool. Whether validation also runs under the averaged
            weights, logging `val_<prefix>_<metric>` beside the raw keys.
        final: `"averaged"` or `"raw"`: the weights the model holds after
            `fit`.
        checkpoint_path: Optional path ending in `.weights.h5`, written with
            the averaged weights at every epoch end, atomically.
    """

    prefix = "avg"
    in_step = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "prefix" in cls.__dict__:
            KINDS[cls.prefix] = cls.__name__

    def __init__(self, evaluate=True, final="averaged", checkpoint_path=None):
        super().__init__()
        self.evaluate = check_bool("evaluate", evaluate)
        self.final = check_choice("final", final, FINALS)
        self.checkpoint_path = check_optional_weights_path(
            "checkpoint_path", checkpoint_path
        )
        self._sources = None
        self._averages = None
        self._count = None
        self._owner = None  # the model the variables were made for
        self._optimizer = None  # the optimizer they are attached to
        self._patched = None  # (optimizer, model) with wrapped methods
        self._fitting = False
        self._token = None  # the `History` of the `fit` running now
        self._guarded = None
        self._evaluate_patched = None
        self._pending_state = None
        self._raw = WeightSnapshot()
        self._held = None  # {index in model.weights: value} after the hook
        self._averaged_in_place = False
        self._writer = None
        self._resume_done = None

    # -- model and variables -----------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        if self._fitting:
            # A new `fit`/`evaluate` while this one thinks it trains: the
            # previous `fit` was left by an exception.
            self._abandon()
        if self.in_step:
            self._attach(model)
        _resume.register(self, model)

    def _select(self, model):
        return [
            v
            for v in model.trainable_variables
            if not getattr(v, "overwrite_with_gradient", False)
        ]

    def _make_variables(self, model):
        if self._owner is model and self._averages is not None:
            return
        sources = self._select(model)
        if not sources:
            return
        optimizer = _innermost(model.optimizer) if self.in_step else None
        averages = []
        with _backend.variable_scope(model):
            for i, v in enumerate(sources):
                kwargs = dict(
                    shape=v.shape,
                    initializer="zeros",
                    dtype="float32",
                    aggregation="only_first_replica",
                    layout=getattr(v, "_layout", None),
                    name=f"{self.prefix}_{i}",
                )
                if optimizer is not None:
                    averages.append(optimizer.add_variable(**kwargs))
                else:
                    averages.append(keras.Variable(trainable=False, **kwargs))
            count_kwargs = dict(
                shape=(),
                initializer="zeros",
                dtype="int32",
                aggregation="only_first_replica",
                name=f"{self.prefix}_count",
            )
            if optimizer is not None:
                count = optimizer.add_variable(**count_kwargs)
            else:
                count = keras.Variable(trainable=False, **count_kwargs)
        self._sources, self._averages, self._count = sources, averages, count
        self._owner, self._optimizer = model, optimizer
        self._raw = WeightSnapshot()
        self._held = None
        for a, v in zip(averages, sources):
            a.assign(_fresh(v, "float32"))

    def _attach(self, model):
        """Creates the averages and hooks the optimizer (in-step subclasses)."""
        if self._patched is not None and self._patched[1] is model:
            return
        self._detach()
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None or not getattr(model, "built", False):
            return
        if not optimizer.built:
            with _backend.variable_scope(model):
                optimizer.build(model.trainable_variables)
        self._make_variables(model)
        if self._averages is None:
            return
        inner = _innermost(model.optimizer)
        if inner is not self._optimizer:
            fail(
                "model",
                "the model whose optimizer holds this callback's averages",
                model,
            )
        stale = getattr(inner.__dict__.get("apply"), "_averaging", None)
        if stale is not None and stale is not self:
            # Left hooked by a `fit` that raised.
            stale._abandon()
        present = {id(v) for v in inner._variables}
        for v in [*self._averages, self._count]:
            if id(v) not in present:
                inner._track_variable(v)
        original = inner.apply

        def apply(grads, trainable_variables=None):
            accumulate = getattr(inner, "gradient_accumulation_steps", None)
            before = ops.copy(inner.iterations) if accumulate else None
            result = original(grads, trainable_variables)
            stepped = None
            if accumulate:
                stepped = ops.greater(inner.iterations, before)
            self._in_step_update(stepped)
            return result

        apply._averaging = self
        inner.apply = apply
        self._patched = (inner, model)
        self._guard(model)
        # A compiled step traced before now knows nothing of the averages.
        model.train_function = None

    def _guard(self, model):
        """Unhooks this callback at the next `fit` if its own one raised.

        Keras calls no hook when `fit` is left by an exception; every `fit`
        calls `make_train_function` first, so a stale hook goes there.
        """
        if "make_train_function" in vars(model):
            return
        original = model.make_train_function

        def make_train_function(*args, **kwargs):
            token = self._token
            if token is not None and getattr(model, "history", None) is not (
                token
            ):
                self._abandon()
                return model.make_train_function(*args, **kwargs)
            return original(*args, **kwargs)

        make_train_function._averaging = self
        model.make_train_function = make_train_function
        self._guarded = model

    def _unguard(self):
        model = getattr(self, "_guarded", None)
        self._guarded = None
        if model is not None:
            hook = model.__dict__.get("make_train_function")
            if getattr(hook, "_averaging", None) is self:
                del model.__dict__["make_train_function"]

    def _unhook(self):
        """Undoes every hook, variable attachment and registration."""
        self._fitting = False
        self._token = None
        model = self._owner
        _resume.finished(self)
        self._unwrap_evaluate()
        self._detach()
        self._unguard()
        if model is not None:
            registered = _active(model)
            if registered.get(self.prefix) is self:
                del registered[self.prefix]

    def _abandon(self):
        """Unhooks after a `fit` left by an exception (raw weights kept)."""
        if self._owner is not None:
            sync_model_state(self._owner)
        self._unhook()
        self._close_writer(quiet=True)

    def _detach(self):
        if self._patched is None:
            return
        inner, model = self._patched
        self._patched = None
        inner.__dict__.pop("apply", None)
        _remove(inner._variables, [*self._averages, self._count])
        model.train_function = None

    @contextlib.contextmanager
    def _hidden_from_optimizer(self):
        """The optimizer without this callback's variables, for a file.

        A weights file written with the optimizer's state then has the
        optimizer's own layout, and loads into a model trained without the
        callback.
        """
        if self._patched is None:
            yield
            return
        variables = self._patched[0]._variables
        saved = list(variables)
        _remove(variables, [*self._averages, self._count])
        try:
            yield
        finally:
            variables.clear()
            variables.extend(saved)

    # -- subclass hooks ------------------------------------------------------

    def _in_step_update(self, stepped):
        raise NotImplementedError

    def _start(self):
        pass

    def _ready(self):
        return True

    def _after_swap_in(self):
        pass

    def _before_validation(self):
        # Runs when `fit` starts an epoch's validation, before `_ready()`
        # is asked: SWA folds that epoch's weights into its average here.
        pass

    def _extra_state(self):
        return {}

    def _load_extra_state(self, state):
        pass

    # -- helpers for subclasses ----------------------------------------------

    def _restart_average(self):
        for a, v in zip(self._averages, self._sources):
            a.assign(_fresh(v, "float32"))
        self._count.assign(0)
        self._held = None

    def _assign_average(self, values, count):
        for a, value in zip(self._averages, values):
            a.assign(ops.cast(value, "float32"))
        self._count.assign(int(count))

    def _read_count(self):
        return int(_numpy(self._count))

    # -- Keras hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        if self._averaged_in_place and self._owner is model:
            # A new fit starts from the weights the model holds now.
            self._averaged_in_place = False
            self._raw = WeightSnapshot()
        if self.in_step:
            if self._patched is None or self._patched[1] is not model:
                self._attach(model)
                if self._patched is not None:
                    model.make_train_function(force=True)
        else:
            self._make_variables(model)
        if self._averages is None:
            raise ValueError(
                f"{type(self).__name__} found no trainable variables to "
                "average: build the model (e.g. with a `keras.Input`) and "
                "compile it with an optimizer before `fit`."
            )
        if self.checkpoint_path is not None:
            try:
                ensure_writable(self.checkpoint_path)
            except OSError as error:
                raise OSError(
                    f"{type(self).__name__} cannot write `checkpoint_path` "
                    f"{self.checkpoint_path!r}: {error.__cause__ or error}"
                ) from error
            if self._writer is None or self._writer.path != (
                self.checkpoint_path
            ):
                self._writer = BackgroundWriter(
                    type(self).__name__, self.checkpoint_path
                )
            self._writer.open(model)
        self._resume_done = None
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._check_state(state)
            self._assign_average(state["averages"], state["count"])
            self._load_extra_state(state)
            self._held = None
        else:
            self._restart_average()
        self._fitting = True
        self._token = getattr(model, "history", None)
        self._guard(model)
        _ACTIVE.setdefault(model, {})[self.prefix] = self
        if self.evaluate:
            self._wrap_evaluate(model)
        self._start()

    def on_test_begin(self, logs=None):
        if not self._fitting:
            self._unhook()

    def on_predict_begin(self, logs=None):
        if not self._fitting:
            self._unhook()

    def on_epoch_end(self, epoch, logs=None):
        if self.checkpoint_path is not None and self._ready():
            # The optimizer's own state too (without the averages), so the
            # file loads quietly into the model compiled as it is. The
            # copies are taken under the swap; the file is written on a
            # worker thread (`_checkpoint.BackgroundWriter`).
            with self._swapped(run_hook=False), plain_optimizer(self.model):
                self._writer.write(self.model, tag=epoch)
        _resume.epoch_done(self, epoch)

    def on_train_end(self, logs=None):
        self._finish()
        self._close_writer()

    def _close_writer(self, quiet=False):
        if self._writer is not None:
            self._writer.finish(quiet)

    # -- resume (BackupAndRestore, see `_resume`) ------------------------------

    def _resume_state(self):
        state = self.get_state()
        arrays = state.pop("averages")
        return state, arrays

    def _resume_load(self, meta, arrays):
        state = {k: v for k, v in meta.items() if k not in ("save", "done")}
        state["averages"] = list(arrays)
        if self._fitting:
            # `on_train_begin` already started a new average: continue the
            # saved one instead.
            self._check_state(state)
            self._assign_average(state["averages"], state["count"])
            self._load_extra_state(state)
            self._held = None
            self._resume_done = meta.get("done")
        else:
            self.set_state(state)

    # -- swapping ------------------------------------------------------------

    def _swap_in(self, run_hook):
        model = self._owner
        sync_model_state(model)
        self._raw.capture(model)
        for v, a in zip(self._sources, self._averages):
            v.assign(_fresh(a, v.dtype))
        if run_hook:
            self._after_swap_in()
            if type(self)._after_swap_in is not WeightAveraging._after_swap_in:
                self._remember_held()
        elif self._held:
            weights = model.weights
            for i, value in self._held.items():
                weights[i].assign(value)

    def _swap_out(self):
        self._raw.restore(self._owner)

    @contextlib.contextmanager
    def _swapped(self, run_hook):
        self._swap_in(run_hook)
        try:
            yield
        finally:
            self._swap_out()

    def _remember_held(self):
        # Non-averaged float state the hook changed (recalibrated batch-norm
        # statistics): part of the averaged model from now on.
        averaged = {id(v) for v in self._sources}
        raw = self._raw.values
        held = {}
        for i, v in enumerate(self._owner.weights):
            if id(v) in averaged or "float" not in str(v.dtype):
                continue
            value = _numpy(v.value)
            if raw is None or not np.array_equal(value, _numpy(raw[i])):
                held[i] = value
        self._held = held or None

    def _wrap_evaluate(self, model):
        original = model.evaluate

        def evaluate(*args, **kwargs):
            if kwargs.get("_use_cached_eval_dataset") and self._fitting:
                self._before_validation()
            results = original(*args, **kwargs)
            if not (
                kwargs.get("_use_cached_eval_dataset")
                and self._fitting
                and isinstance(results, dict)
                and self._ready()
            ):
                return results
            again = dict(kwargs, callbacks=None, verbose=0)
            with self._swapped(run_hook=True):
                averaged = original(*args, **again)
            merged = dict(results)
            for name, value in averaged.items():
                merged[f"{self.prefix}_{name}"] = value
            return merged

        evaluate._averaging = self
        model.evaluate = evaluate
        self._evaluate_patched = model

    def _unwrap_evaluate(self):
        model = getattr(self, "_evaluate_patched", None)
        self._evaluate_patched = None
        if model is not None:
            model.__dict__.pop("evaluate", None)

    def _finish(self):
        """Ends the fit: unhooks, then puts the final weights in place."""
        if not self._fitting:
            return
        model = self._owner
        sync_model_state(model)
        self._unhook()
        if self.final == "averaged" and self._ready():
            self._swap_in(run_hook=True)
            self._averaged_in_place = True

    # -- public ----------------------------------------------------------------

    def averaged_weights(self):
        """The averaged model's weights, in `model.get_weights()` order.

        The averages of the trainable variables, cast to each variable's
        dtype, and the other variables as the averaged model has them: the
        raw model's values (those of the end of `fit` once it is over), or
        the ones `_after_swap_in` left at the last averaged evaluation.
        The same whichever weights the model holds (averaged, raw, or an
        `EarlyStoppingRestore`'s best).
        """
        model = self._fitted_model("an average")
        index = {id(v): i for i, v in enumerate(self._sources)}
        held = self._held or {}
        rest = self._raw.values if self._averaged_in_place else None
        out = []
        for i, v in enumerate(model.weights):
            if id(v) in index:
                a = self._averages[index[id(v)]]
                out.append(_numpy(ops.cast(a.value, v.dtype)))
            elif i in held:
                out.append(np.array(held[i]))
            elif rest is not None:
                out.append(_numpy(rest[i]))
            else:
                out.append(_numpy(v.value))
        return out

    def raw_weights(self):
        """The raw (trained) weights, in `model.get_weights()` order.

        Once `fit` has put the averaged weights in place, the raw weights
        it ended with; before that, the model's current weights.
        """
        model = self._fitted_model("weights")
        if self._averaged_in_place:
            return [_numpy(v) for v in self._raw.values]
        return [_numpy(v.value) for v in model.weights]

    def _fitted_model(self, what):
        model = self._owner
        if model is None or self._averages is None:
            raise ValueError(
                f"{type(self).__name__} has no {what} yet: pass it to `fit` "
                "first."
            )
        sync_model_state(model)
        return model

    def get_state(self):
        """The average, its count and the subclass's counters (NumPy)."""
        if self._averages is None:
            raise ValueError(
                f"{type(self).__name__} has no state yet: pass it to `fit` "
                "first."
            )
        sync_model_state(self._owner)
        state = {
            "prefix": self.prefix,
            "averages": [_numpy(a.value) for a in self._averages],
            "count": self._read_count(),
        }
        state.update(self._extra_state())
        return state

    def set_state(self, state):
        """Makes the next `fit` continue the average in `state`.

        `state` is what `get_state()` returned (for this kind of callback
        and a model with the same trainable variables); it is checked
        against the model when that `fit` starts.
        """
        if not isinstance(state, dict) or state.get("prefix") != self.prefix:
            expected = f"a dict from {type(self).__name__}.get_state()"
            fail("state", expected, state)
        averages = state.get("averages")
        if not isinstance(averages, (list, tuple)):
            fail("state", "a dict with a list of arrays at 'averages'", state)
        if self._sources is not None:
            self._check_state(state)
        self._pending_state = dict(state)

    def _check_state(self, state):
        shapes = [tuple(v.shape) for v in self._sources]
        got = [tuple(np.shape(a)) for a in state["averages"]]
        if shapes != got:
            fail(
                "state",
                f"averages of shapes {shapes} (this model's trainable "
                "variables)",
                f"<averages of shapes {got}>",
            )
