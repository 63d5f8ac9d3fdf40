"""Early stopping that always leaves the model holding its best weights."""

import contextlib
import math
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number

MODES = ("auto", "min", "max")
# Monitored names that are better when larger, for `mode="auto"`.
_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "iou", "psnr")
_SUFFIX = ".weights.h5"
# Attribute marking our wrapper around `model.train_function`.
_GUARD = "_early_stopping_restore_guard"


def _finite_or_none(name, value):
    if value is None:
        return None
    return check_number(name, value)


def _snapshot_kind():
    """How best weights are kept on this backend and device (see below)."""
    if keras.backend.backend() != "jax":
        return "variable"
    devices = keras.distribution.list_devices()
    on_cpu = all(str(d).lower().startswith("cpu") for d in devices)
    return "host" if on_cpu else "copy"


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
    `model.train_function` while `fit` runs). Keras calls no callback hook
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
        monitor: Name of the logged quantity to monitor. Defaults to
            `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (`"max"` when the name contains
            `acc`, `auc`, `precision`, `recall`, `f1`, `iou` or `psnr`,
            else `"min"`). Defaults to `"auto"`.
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
            (a temporary file in the same directory, then `os.replace`), so
            the file is always complete and loadable with
            `model.load_weights`. The directory is created if missing; an
            unwritable location raises `OSError` in `on_train_begin`.
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
            raise ValueError(
                "Invalid value received for argument `monitor`. Expected a "
                f"non-empty string. Received: monitor={monitor!r}"
            )
        self.monitor = monitor
        self.mode = check_choice("mode", mode, MODES)
        self.patience = check_int("patience", patience, 0)
        self.min_delta = check_number("min_delta", min_delta, 0.0)
        self.baseline = _finite_or_none("baseline", baseline)
        self.start_from_epoch = check_int(
            "start_from_epoch", start_from_epoch, 0
        )
        self.restore_best = bool(restore_best)
        if checkpoint_path is not None:
            checkpoint_path = os.fspath(checkpoint_path)
            if not checkpoint_path.endswith(_SUFFIX):
                raise ValueError(
                    "Invalid value received for argument `checkpoint_path`. "
                    f"Expected a path ending in '{_SUFFIX}'. "
                    f"Received: checkpoint_path={checkpoint_path!r}"
                )
        self.checkpoint_path = checkpoint_path
        self.save_optimizer = bool(save_optimizer)
        self.stopping_threshold = _finite_or_none(
            "stopping_threshold", stopping_threshold
        )
        self.divergence_threshold = _finite_or_none(
            "divergence_threshold", divergence_threshold
        )
        self.check_finite = bool(check_finite)
        self.strict = bool(strict)
        self.verbose = check_choice("verbose", verbose, (0, 1))
        if mode == "auto":
            name = monitor.lower()
            mode = "max" if any(h in name for h in _MAX_HINTS) else "min"
        self._sign = 1.0 if mode == "min" else -1.0
        self._active = False
        self._reset()

    # -- state -------------------------------------------------------------

    def _reset(self):
        self.best = math.inf * self._sign
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
        if self.checkpoint_path is not None:
            self._check_writable()
        self._install_step_guard()
        self._active = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            self._missing_monitor(logs)
            return
        if epoch < self.start_from_epoch:
            return
        current = float(logs[self.monitor])
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
            sync = getattr(self.model, "jax_state_sync", None)
            if sync is not None:
                sync()
            self.restore()

    def _install_step_guard(self):
        model = self.model
        step = getattr(model, "train_function", None)
        # Drop guards left by callbacks no longer training (an exception
        # outside the step skips `on_train_end`); they only pass through.
        while step is not None and hasattr(step, _GUARD):
            owner, inner = getattr(step, _GUARD)
            if owner._active and owner is not self:
                break
            step = inner
        model.train_function = step
        if step is None:
            return

        def guarded(*args, **kwargs):
            try:
                return step(*args, **kwargs)
            except BaseException as error:
                if not _ends_epoch(error):
                    self._after_error()
                raise

        setattr(guarded, _GUARD, (self, step))
        model.train_function = guarded

    def _remove_step_guard(self):
        step = getattr(self.model, "train_function", None)
        guard = getattr(step, _GUARD, None)
        if guard is not None and guard[0] is self:
            self.model.train_function = guard[1]

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
        stem = self.checkpoint_path[: -len(_SUFFIX)]
        return f"{stem}.tmp-{os.getpid()}{_SUFFIX}"

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
