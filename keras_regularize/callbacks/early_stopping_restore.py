"""Early stopping that always leaves the model holding its best weights."""

import contextlib
import math
import os
import re
import uuid
import warnings

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend
from keras_regularize._backend import sync_model_state
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import fail

MODES = ("auto", "min", "max")
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
_SIGNS = {"min": 1.0, "max": -1.0}
_SUFFIX = ".weights.h5"
# Attribute marking our wrapper around `model.train_function`.
_GUARD = "_early_stopping_restore_guard"


def _finite_or_none(name, value):
    if value is None:
        return None
    return check_number(name, value)


# How best weights are kept on this backend and device (see below).
_snapshot_kind = _backend.weight_snapshot_kind


def _name_direction(monitor):
    """`"min"` for names ending in a loss or error suffix, else `None`."""
    name = monitor.lower().removeprefix("val_")
    return "min" if name.endswith(MIN_SUFFIXES) else None


def _leaf_metrics(model):
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


def _metric_direction(model, monitor):
    """Direction of the model's metric logged as `monitor`.

    Returns `("min" | "max" | None, pending)`: `None` when no metric of that
    name has a known direction (`_direction`, which Keras's own callbacks
    read), or when metrics of that name disagree.
    """
    leaves, pending = _leaf_metrics(model)
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


def _scalar(monitor, value):
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


def _fsync_directory(directory):
    # Makes a rename durable. Opening a directory fails on some platforms
    # (Windows); the rename itself is still atomic there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Link:
    """One guard in the chain wrapped around `model.train_function`."""

    def __init__(self, owner, inner):
        self.owner = owner
        self.inner = inner


def _ends_epoch(error):
    # Exceptions Keras itself uses to end an epoch of unknown length; they
    # leave the train step normally and must not count as a failure.
    return isinstance(error, StopIteration) or (
        type(error).__name__ == "OutOfRangeError"
    )


@export("keras_regularize.callbacks.EarlyStoppingRestore")
class EarlyStoppingRestore(keras.callbacks.Callback):
    """Stops training when a metric stalls and keeps the best weights.

    An epoch improves when `current < best - min_delta` (`mode="min"`; for
    `"max"`, `current > best + min_delta`). Training stops after `patience`
    epochs in a row without improvement, as soon as the metric is at least
    as good as `stopping_threshold`, as soon as it is worse than
    `divergence_threshold`, or after `patience` epochs if the best value has
    not reached `baseline` (even while the run keeps improving). A NaN or
    infinite value never becomes the best; with `check_finite=True` it stops
    training at once, otherwise it counts as an epoch without improvement.

    With `restore_best=True` the best weights are copied on the device that
    holds them at each improvement, with no trip to host memory: into
    buffers reused across improvements on TensorFlow and PyTorch, with
    `keras.ops.copy` under JAX on accelerators, and into reused numpy
    buffers under JAX on CPU (where the host is the device). They are
    assigned back whenever training ends: early stop, threshold,
    non-finite value, last epoch. When `fit` is left by an exception or a
    `KeyboardInterrupt` raised inside a training step, the weights are
    restored automatically on every backend (the callback wraps
    `model.train_function` while `fit` runs, and the wrapper acts only on
    the steps of the callback's own `fit`: a later `fit` or
    `train_on_batch` without the callback is never reverted, even when the
    earlier `fit` was left by an exception). Keras calls no callback hook
    for exceptions raised elsewhere (data loading, validation, other
    callbacks), so for full coverage run `fit` inside
    `with callback.restore_on_error():`, or call `callback.restore()`
    yourself after catching the exception.

    The copies take as much accelerator memory as the model's weights. After
    `fit` the callback exposes `best`, `best_epoch`, `stopped_epoch` (`None`
    when it did not stop training), `wait`, `stop_reason` (one of
    `"patience"`, `"baseline"`, `"stopping_threshold"`,
    `"divergence_threshold"`, `"non_finite"`, `"completed"`,
    `"interrupted"`) and `restored` (whether best weights were assigned). It
    resets itself at the start of every `fit`, so one instance can be reused.

    Args:
        monitor: Name of the logged quantity to monitor: a number, or an
            array or tensor of size 1 (as `keras.metrics.F1Score` logs for
            one class); a larger array raises a `ValueError`. Defaults to
            `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"`. Under `"auto"`, a name ending
            (after any `val_` prefix) in `loss`, `error`, `crossentropy`,
            `hinge`, `divergence`, `mae`, `mse`, `rmse`, `msle`, `mape`,
            `kld`, `logcosh`, `log_cosh`, `poisson`, `nll` or `perplexity`
            is minimized; any other name takes the direction of the model's
            metric of that name (`Accuracy`, `AUC`, `F1Score`, `Precision`,
            ... are maximized), and a name with no such metric (one logged
            by another callback, a `Mean` tracker) raises a `ValueError`
            asking for `"min"` or `"max"` when training starts (at the end
            of the first epoch where the compiled metrics are only built
            then, as on TensorFlow). Defaults to `"auto"`.
        patience: Non-negative int. Epochs without improvement before
            stopping. Defaults to `10`.
        min_delta: Non-negative float. Smallest change that counts as an
            improvement. Defaults to `0.0`.
        baseline: Optional float. Training stops after `patience` epochs if
            the best value is not at least this good. Defaults to `None`.
        start_from_epoch: Non-negative int. Epochs to run before monitoring
            starts. Defaults to `0`.
        restore_best: Bool. Whether the best weights are assigned back when
            training ends. Defaults to `True`.
        checkpoint_path: Optional path ending in `.weights.h5`. The best
            weights are also written there at each improvement, atomically
            (a temporary file with a name unique to the writer in the same
            directory, then `os.replace` and an `fsync` of the directory),
            so the file is always complete and loadable with
            `model.load_weights`, even with several writers. The directory
            is created if missing; an unwritable location raises `OSError`
            in `on_train_begin`.
            Defaults to `None`.
        save_optimizer: Bool. Whether the checkpoint also holds the
            optimizer's variables. Defaults to `True`.
        stopping_threshold: Optional float. Stop as soon as the metric is at
            least this good. Defaults to `None`.
        divergence_threshold: Optional float. Stop as soon as the metric is
            worse than this. Defaults to `None`.
        check_finite: Bool. Whether a NaN or infinite value stops training
            at once. Defaults to `True`.
        strict: Bool. Whether a missing `monitor` key raises instead of
            warning once. Defaults to `False`.
        verbose: `0` (silent) or `1` (print why training stopped and which
            epoch was restored). Defaults to `0`.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> stop = keras_regularize.callbacks.EarlyStoppingRestore(
    ...     monitor="loss", patience=2)
    >>> with stop.restore_on_error():
    ...     history = model.fit(np.ones((8, 2)), np.zeros((8, 1)), epochs=3,
    ...                         callbacks=[stop], verbose=0)
    >>> stop.best_epoch, stop.stop_reason
    (2, 'completed')
    """

    def __init__(
        self,
        monitor="val_loss",
        mode="auto",
        patience=10,
        min_delta=0.0,
        baseline=None,
        start_from_epoch=0,
        restore_best=True,
        checkpoint_path=None,
        save_optimizer=True,
        stopping_threshold=None,
        divergence_threshold=None,
        check_finite=True,
        strict=False,
        verbose=0,
    ):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            fail("monitor", "a non-empty string", monitor)
        self.monitor = monitor
        self.mode = check_choice("mode", mode, MODES)
        self.patience = check_int("patience", patience, 0)
        self.min_delta = check_number("min_delta", min_delta, 0.0)
        self.baseline = _finite_or_none("baseline", baseline)
        self.start_from_epoch = check_int(
            "start_from_epoch", start_from_epoch, 0
        )
        self.restore_best = check_bool("restore_best", restore_best)
        if checkpoint_path is not None:
            expected = f"None or a path ending in '{_SUFFIX}'"
            if not isinstance(checkpoint_path, (str, os.PathLike)):
                fail("checkpoint_path", expected, checkpoint_path)
            path = os.fspath(checkpoint_path)
            if not isinstance(path, str) or not path.endswith(_SUFFIX):
                fail("checkpoint_path", expected, checkpoint_path)
            checkpoint_path = path
        self.checkpoint_path = checkpoint_path
        self.save_optimizer = check_bool("save_optimizer", save_optimizer)
        self.stopping_threshold = _finite_or_none(
            "stopping_threshold", stopping_threshold
        )
        self.divergence_threshold = _finite_or_none(
            "divergence_threshold", divergence_threshold
        )
        self.check_finite = check_bool("check_finite", check_finite)
        self.strict = check_bool("strict", strict)
        self.verbose = check_choice("verbose", verbose, (0, 1))
        if self.mode == "auto":
            # `None` until the model's metrics tell (see `_resolve_mode`).
            self._fixed_sign = _SIGNS.get(_name_direction(monitor))
        else:
            self._fixed_sign = _SIGNS[self.mode]
        self._sign = self._fixed_sign
        self._active = False
        self._armed = False
        self._fit_token = None
        self._reset()

    # -- state -------------------------------------------------------------

    def _reset(self):
        self._sign = self._fixed_sign
        self.best = None if self._sign is None else math.inf * self._sign
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self.stop_reason = None
        self.restored = False
        self._seen = 0
        self._warned = False
        self._variables = None
        self._best_values = None
        self._kind = None
        self._owns_buffers = False

    def _better(self, a, b):
        """Whether `a` is at least as good as `b` (no `min_delta`)."""
        return self._sign * a <= self._sign * b

    def _improves(self, current):
        return self._sign * current < self._sign * self.best - self.min_delta

    # -- Keras hooks -------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._reset()
        self._resolve_mode(final=False)
        if self.checkpoint_path is not None:
            self._check_writable()
        # `fit` gives the model a new `History` before any callback starts:
        # it tells this fit from a later one when this one was left by an
        # exception that skipped `on_train_end`.
        self._fit_token = getattr(self.model, "history", None)
        self._armed = False
        self._install_step_guard()
        self._active = True

    def on_train_batch_begin(self, batch, logs=None):
        # Arms the step guard for the one step `fit` runs next. Only a flag:
        # reading `self.model` here would sync JAX state at every batch.
        self._armed = True

    def on_epoch_end(self, epoch, logs=None):
        try:
            self._epoch_end(epoch, logs or {})
        except BaseException:
            # An error raised here (an array-valued or missing monitor, an
            # unknowable mode, an interrupt) ends `fit` without
            # `on_train_end`: restore and unhook now.
            self._after_error()
            raise

    def _epoch_end(self, epoch, logs):
        if self._sign is None:
            self._resolve_mode(final=True)
        if logs.get(self.monitor) is None:
            self._missing_monitor(logs)
            return
        if epoch < self.start_from_epoch:
            return
        current = _scalar(self.monitor, logs[self.monitor])
        self._seen += 1
        if not math.isfinite(current):
            self.wait += 1
            if self.check_finite:
                self._stop(epoch, "non_finite")
            elif self.wait >= self.patience:
                self._stop(epoch, "patience")
            return
        if self._improves(current):
            self.wait = 0
            self._record_best(epoch, current)
            if self.checkpoint_path is not None:
                self._write_checkpoint()
        else:
            self.wait += 1
        if self.stopping_threshold is not None and self._better(
            current, self.stopping_threshold
        ):
            self._stop(epoch, "stopping_threshold")
        elif self.divergence_threshold is not None and not self._better(
            current, self.divergence_threshold
        ):
            self._stop(epoch, "divergence_threshold")
        elif self.wait > 0 and self.wait >= self.patience:
            self._stop(epoch, "patience")
        elif (
            self.baseline is not None
            and self._seen >= max(self.patience, 1)
            and not self._better(self.best, self.baseline)
        ):
            self._stop(epoch, "baseline")

    def on_train_end(self, logs=None):
        self._active = False
        self._remove_step_guard()
        if self.stop_reason is None:
            self.stop_reason = "completed"
        if self.restore_best:
            self.restore()

    # -- public helpers ----------------------------------------------------

    def restore(self):
        """Assigns the best weights seen so far to the model.

        Returns `True` if weights were assigned, `False` when no epoch has
        improved yet (the model is left as it is). Safe to call more than
        once, e.g. after catching an exception raised by `fit`.
        """
        if self._best_values is None:
            return False
        for variable, value in zip(self._variables, self._best_values):
            if self._kind == "copy":
                # `assign` stores the array itself, and the next `fit`
                # donates it: hand over a copy and keep ours.
                value = ops.copy(value)
            elif self._kind == "variable":
                value = value.value
            variable.assign(value)
        # JAX may alias a numpy buffer it was given; never write into it
        # again.
        self._owns_buffers = False
        self.restored = True
        if self.verbose:
            print(
                f"EarlyStoppingRestore: restored the weights of epoch "
                f"{self.best_epoch + 1} ({self.monitor}={self.best:.6g})."
            )
        return True

    @contextlib.contextmanager
    def restore_on_error(self):
        """Context manager restoring the best weights if its body raises.

        Covers every exception and `KeyboardInterrupt`, wherever `fit`
        raises it; the exception is re-raised after the restore. Use it as
        `with callback.restore_on_error(): model.fit(..., callbacks=[...])`.
        """
        try:
            yield self
        except BaseException:
            self._after_error()
            raise

    # -- internals ---------------------------------------------------------

    def _resolve_mode(self, final):
        """Sets the direction of `mode="auto"` from the model's metrics.

        Raises as soon as the direction is known to be unknowable: when the
        metrics are built (`final=False`, at `on_train_begin`) or at the
        first epoch end (`final=True`, after the first train step built
        them).
        """
        if self._sign is not None:
            return
        direction, pending = _metric_direction(self.model, self.monitor)
        if direction is None and pending and not final:
            return  # the compiled metrics are built by the first step
        if direction is None:
            fail(
                "mode",
                "'min' or 'max' for this monitor: `mode='auto'` cannot tell "
                f"whether monitor={self.monitor!r} should be minimized or "
                "maximized: its name does not end in `loss` or an error "
                "suffix (`mae`, `mse`, `error`, `crossentropy`, `hinge`, "
                "...), and the model has no metric of that name with a "
                "known direction",
                self.mode,
            )
        self._sign = _SIGNS[direction]
        self.best = math.inf * self._sign

    def _stop(self, epoch, reason):
        self.model.stop_training = True
        self.stopped_epoch = epoch
        self.stop_reason = reason
        if self.verbose:
            print(
                f"EarlyStoppingRestore: stopped at epoch {epoch + 1} "
                f"({reason})."
            )

    def _missing_monitor(self, logs):
        message = (
            f"EarlyStoppingRestore is monitoring `{self.monitor}`, which is "
            f"not in the logs. Available keys: {sorted(logs)}."
        )
        if self.strict:
            raise ValueError(message)
        if not self._warned:
            warnings.warn(message, stacklevel=2)
            self._warned = True

    def _record_best(self, epoch, current):
        # A KeyboardInterrupt landing in the middle of the copy would leave
        # a snapshot that is part old best, part new; finish the copy and
        # the bookkeeping first, then let the interrupt go on.
        try:
            if self.restore_best:
                self._keep_best()
            self.best, self.best_epoch = current, epoch
        except BaseException:
            if self.restore_best:
                self._keep_best()
            self.best, self.best_epoch = current, epoch
            raise

    def _keep_best(self):
        if self._variables is None:
            self._variables = list(self.model.weights)
            self._kind = _snapshot_kind()
        variables, best = self._variables, self._best_values
        if self._kind == "copy":
            # JAX on an accelerator: arrays are immutable but the next
            # train step donates (deletes) them, so keep a device copy.
            self._best_values = [
                ops.copy(ops.stop_gradient(v.value)) for v in variables
            ]
        elif self._kind == "host":
            # JAX on CPU, where the host is the device: numpy copies into
            # buffers reused at each improvement (XLA's CPU copy is several
            # times slower than numpy's, and reuse avoids page faults).
            if best is None or not self._owns_buffers:
                self._best_values = [np.array(v.value) for v in variables]
            else:
                for buffer, v in zip(best, variables):
                    np.copyto(buffer, np.asarray(v.value))
            self._owns_buffers = True
        elif best is None:
            # TF and torch: variables update their buffers in place, so
            # keep our own non-trainable variables and assign into them.
            self._best_values = [
                keras.Variable(
                    ops.copy(ops.stop_gradient(v.value)),
                    dtype=v.dtype,
                    trainable=False,
                    name=f"best_{i}",
                )
                for i, v in enumerate(variables)
            ]
        else:
            for snapshot, v in zip(best, variables):
                snapshot.assign(v.value)

    def _after_error(self):
        if not self._active:
            return
        self._active = False
        self._remove_step_guard()
        self.stop_reason = "interrupted"
        if self.restore_best and self._best_values is not None:
            # JAX keeps the live weights outside the variables during an
            # epoch; write them back first so `fit`'s own clean-up does not
            # overwrite the restored weights afterwards.
            sync_model_state(self.model)
            self.restore()

    def _live_in(self, model):
        """Whether this callback is in the `fit` now running on `model`."""
        return self._active and (
            getattr(model, "history", None) is self._fit_token
        )

    def _install_step_guard(self):
        model = self.model
        # Drop guards of callbacks no longer training: an exception outside
        # the step skips their `on_train_end`.
        link = getattr(getattr(model, "train_function", None), _GUARD, None)
        while link is not None:
            owner = link.owner
            if owner is self or not owner._live_in(model):
                owner._remove_step_guard(model)
                link = getattr(model.train_function, _GUARD, None)
            else:
                link = getattr(link.inner, _GUARD, None)
        step = getattr(model, "train_function", None)
        if step is None:
            return
        link = _Link(self, step)

        def guarded(*args, **kwargs):
            # Guards only the steps of its own fit: the flag is set by this
            # callback's `on_train_batch_begin` just before each step and
            # taken here. A step with the flag down belongs to another fit,
            # a `train_on_batch`, ... and passes through; once this
            # callback's fit is over, the guard also removes itself.
            if not (self._armed and self._live_in(model)):
                if not self._live_in(model):
                    self._active = False
                    self._remove_step_guard(model)
                return link.inner(*args, **kwargs)
            self._armed = False
            try:
                return link.inner(*args, **kwargs)
            except BaseException as error:
                if not _ends_epoch(error):
                    self._after_error()
                raise

        setattr(guarded, _GUARD, link)
        model.train_function = guarded

    def _remove_step_guard(self, model=None):
        """Unlinks this callback's guard, wherever it is in the chain."""
        model = model if model is not None else self._model
        step = getattr(model, "train_function", None)
        link = getattr(step, _GUARD, None)
        if link is not None and link.owner is self:
            model.train_function = link.inner
            return
        while link is not None:
            inner = getattr(link.inner, _GUARD, None)
            if inner is not None and inner.owner is self:
                link.inner = inner.inner
                return
            link = inner

    def _check_writable(self):
        directory = os.path.dirname(os.path.abspath(self.checkpoint_path))
        probe = self._temporary_path()
        try:
            os.makedirs(directory, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as error:
            raise OSError(
                "EarlyStoppingRestore cannot write `checkpoint_path` "
                f"{self.checkpoint_path!r}: {error}"
            ) from error

    def _temporary_path(self):
        # Unique per writer and per write (process id and a random token):
        # two callbacks, threads or processes writing one `checkpoint_path`
        # never share a temporary file, and the last `os.replace` wins.
        stem = self.checkpoint_path[: -len(_SUFFIX)]
        return f"{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex}{_SUFFIX}"

    def _write_checkpoint(self):
        temporary = self._temporary_path()
        extra = {}
        if not self.save_optimizer and self.model.optimizer is not None:
            extra["objects_to_skip"] = [self.model.optimizer]
        try:
            keras.saving.save_weights(self.model, temporary, **extra)
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temporary, self.checkpoint_path)
            _fsync_directory(
                os.path.dirname(os.path.abspath(self.checkpoint_path))
            )
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            if not isinstance(error, OSError):
                raise
            # The directory became unwritable (or full) during training.
            # The previous checkpoint was never opened, so it is intact;
            # the model holds the new best weights, which are kept.
            self._after_error()
            raise OSError(
                "EarlyStoppingRestore could not write the best weights of "
                f"epoch {self.best_epoch + 1} to `checkpoint_path` "
                f"{self.checkpoint_path!r} (is its directory still "
                "writable?). The file there, if any, still holds an earlier "
                f"best epoch. Cause: {error}"
            ) from error
