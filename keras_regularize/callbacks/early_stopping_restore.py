"""Early stopping that always leaves the model holding its best weights."""

import contextlib
import math
import warnings

import keras

from keras_regularize._backend import sync_model_state
from keras_regularize._checkpoint import BackgroundWriter
from keras_regularize._checkpoint import check_optional_weights_path
from keras_regularize._checkpoint import ensure_writable
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize.callbacks import _resume
from keras_regularize.callbacks._averaging import averaged_context
from keras_regularize.callbacks._averaging import averaging_hint
from keras_regularize.callbacks._averaging import finish_averaging
from keras_regularize.callbacks._averaging import plain_optimizer
from keras_regularize.callbacks._monitor import MIN_SUFFIXES as MIN_SUFFIXES
from keras_regularize.callbacks._monitor import auto_direction
from keras_regularize.callbacks._monitor import name_direction
from keras_regularize.callbacks._monitor import scalar
from keras_regularize.callbacks._step_guard import StepGuard
from keras_regularize.callbacks._weight_snapshot import WeightSnapshot

MODES = ("auto", "min", "max")
_SIGNS = {"min": 1.0, "max": -1.0}


class _Default:
    """An argument left out; shows as the value it stands for."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


_RESTORE_DEFAULT = _Default("True")
_ALIAS_DEFAULT = _Default("<same as restore_best_weights>")


def _finite_or_none(name, value):
    if value is None:
        return None
    return check_number(name, value)


def _restore_flag(restore_best_weights, restore_best):
    """The one value of `restore_best_weights` and its alias `restore_best`."""
    given = {}
    if restore_best_weights is not _RESTORE_DEFAULT:
        given["restore_best_weights"] = check_bool(
            "restore_best_weights", restore_best_weights
        )
    if restore_best is not _ALIAS_DEFAULT:
        given["restore_best"] = check_bool("restore_best", restore_best)
    if len(set(given.values())) > 1:
        raise ValueError(
            "`restore_best` is an alias of `restore_best_weights`; pass one "
            f"of them. Received: restore_best_weights={restore_best_weights!r}"
            f", restore_best={restore_best!r}"
        )
    return next(iter(given.values()), True)


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

    With `restore_best_weights=True` the best weights are copied on the
    device that holds them at each improvement, with no trip to host
    memory: into buffers reused across improvements on TensorFlow and
    PyTorch, with `keras.ops.copy` under JAX on accelerators, and into
    reused numpy buffers under JAX on CPU (where the host is the device).
    Each copy goes into a spare buffer that becomes the best one only once
    complete, so an interrupt in the middle of a copy leaves the previous
    best whole. The weights are assigned back whenever training ends:
    early stop, threshold, non-finite value, last epoch. When `fit` is left
    by an exception or a `KeyboardInterrupt` raised inside a training step,
    the weights are restored automatically on every backend (the callback
    wraps `model.train_function` while `fit` runs, and the wrapper acts
    only on the steps of the callback's own `fit`: a later `fit` or
    `train_on_batch` without the callback is never reverted, even when the
    earlier `fit` was left by an exception). Keras calls no callback hook
    for exceptions raised elsewhere (data loading, validation, other
    callbacks), so for full coverage run `fit` inside
    `with callback.restore_on_error():`, or call `callback.restore()`
    yourself after catching the exception.

    The two buffers take up to twice the accelerator memory of the model's
    weights (once on JAX accelerators, between improvements). After `fit`
    the callback exposes `best`, `best_epoch`, `stopped_epoch` (`None`
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
        restore_best_weights: Bool. Whether the best weights are assigned
            back when training ends (Keras's `EarlyStopping` name).
            Defaults to `True`.
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
        restore_best: Bool. Alias of `restore_best_weights` (its name in
            keras_regularize 0.1.0), still accepted, also as an attribute.
            Passing both names with different values raises a
            `ValueError`.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> stop = keras_regularize.callbacks.EarlyStoppingRestore(
    ...     monitor="loss", patience=2, restore_best_weights=True)
    >>> with stop.restore_on_error():
    ...     history = model.fit(np.ones((8, 2)), np.zeros((8, 1)), epochs=3,
    ...                         callbacks=[stop], verbose=0)
    >>> stop.best_epoch, stop.stop_reason, stop.restored
    (2, 'completed', True)
    """

    def __init__(
        self,
        monitor="val_loss",
        mode="auto",
        patience=10,
        min_delta=0.0,
        baseline=None,
        start_from_epoch=0,
        restore_best_weights=_RESTORE_DEFAULT,
        checkpoint_path=None,
        save_optimizer=True,
        stopping_threshold=None,
        divergence_threshold=None,
        check_finite=True,
        strict=False,
        verbose=0,
        restore_best=_ALIAS_DEFAULT,
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
        self.restore_best_weights = _restore_flag(
            restore_best_weights, restore_best
        )
        self.checkpoint_path = check_optional_weights_path(
            "checkpoint_path", checkpoint_path
        )
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
            self._fixed_sign = _SIGNS.get(name_direction(monitor))
        else:
            self._fixed_sign = _SIGNS[self.mode]
        self._guard = StepGuard(on_error=self._after_error)
        self._writer = None
        self._resume_pending = None
        self._resume_done = None
        self._begun = False
        self._reset()

    @property
    def restore_best(self):
        """Alias of `restore_best_weights` (its name in 0.1.0)."""
        return self.restore_best_weights

    @restore_best.setter
    def restore_best(self, value):
        self.restore_best_weights = check_bool("restore_best", value)

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
        self._snapshot = WeightSnapshot()

    def _better(self, a, b):
        """Whether `a` is at least as good as `b` (no `min_delta`)."""
        return self._sign * a <= self._sign * b

    def _improves(self, current):
        return self._sign * current < self._sign * self.best - self.min_delta

    # -- Keras hooks -------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        self._begun = False
        _resume.register(self, model)

    def on_train_begin(self, logs=None):
        self._reset()
        self._resume_done = None
        self._resolve_mode(final=False)
        if self.checkpoint_path is not None:
            try:
                ensure_writable(self.checkpoint_path)
            except OSError as error:
                raise OSError(
                    "EarlyStoppingRestore cannot write `checkpoint_path` "
                    f"{self.checkpoint_path!r}: {error.__cause__ or error}"
                ) from error
            if self._writer is None or self._writer.path != (
                self.checkpoint_path
            ):
                self._writer = BackgroundWriter(
                    "EarlyStoppingRestore",
                    self.checkpoint_path,
                    include_optimizer=self.save_optimizer,
                )
            self._writer.include_optimizer = self.save_optimizer
            self._writer.open(self.model)
        self._guard.install(self.model)
        self._begun = True
        if self._resume_pending is not None:
            pending, self._resume_pending = self._resume_pending, None
            self._apply_resume(*pending)

    def on_train_batch_begin(self, batch, logs=None):
        # Arms the step guard for the one step `fit` runs next. Only a flag:
        # reading `self.model` here would sync JAX state at every batch.
        self._guard.arm()

    def on_epoch_end(self, epoch, logs=None):
        try:
            # A background write that failed since the last epoch ends the
            # run now, not at the next improvement or at the end.
            self._poll_writer()
            self._epoch_end(epoch, logs or {})
            _resume.epoch_done(self, epoch)
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
        current = scalar(self.monitor, logs[self.monitor])
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
        self._guard.remove()
        _resume.finished(self)
        if self.stop_reason is None:
            self.stop_reason = "completed"
        if self.restore_best_weights:
            # Weight averaging callbacks put their final weights in place
            # first, so the restored best wins whatever the callback order.
            finish_averaging(self.model)
            self.restore()
        # The last checkpoint write is complete (or its error raised)
        # before `fit` returns.
        self._close_writer()

    # -- recovery ----------------------------------------------------------

    def restore(self):
        """Assigns the best weights seen so far to the model.

        Returns `True` if weights were assigned, `False` when no epoch has
        improved yet (the model is left as it is). Safe to call more than
        once, e.g. after catching an exception raised by `fit`.
        """
        if not self._snapshot.restore(self.model):
            return False
        # An interrupt may land between a capture and the bookkeeping of
        # `_record_best`: the epoch restored is the one captured.
        self.best, self.best_epoch = self._snapshot.tag
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

    def _after_error(self):
        if not self._guard.active:
            return
        self._guard.remove()
        self._close_writer(quiet=True)
        self.stop_reason = "interrupted"
        if self.restore_best_weights and self._snapshot.captured:
            # JAX keeps the live weights outside the variables during an
            # epoch; write them back first so `fit`'s own clean-up does not
            # overwrite the restored weights afterwards.
            sync_model_state(self.model)
            self.restore()

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
        direction = auto_direction(self.model, self.monitor, self.mode, final)
        if direction is not None:
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
            f"{averaging_hint(self.model, self.monitor)}"
        )
        if self.strict:
            raise ValueError(message)
        if not self._warned:
            warnings.warn(message, stacklevel=2)
            self._warned = True

    def _record_best(self, epoch, current):
        # The snapshot flips to the new copy only once it is complete: an
        # interrupt during the copy leaves the previous best in place.
        if self.restore_best_weights:
            # A `val_ema_*` / `val_swa_*` monitor rates the averaged model:
            # its weights are the ones kept.
            with averaged_context(self.model, self.monitor):
                self._snapshot.capture(self.model, tag=(current, epoch))
        self.best, self.best_epoch = current, epoch

    def _write_checkpoint(self):
        # The copy is taken now (the best weights' snapshot when there is
        # one, else a copy of the weights in place); the file is written
        # on a worker thread. An error of the previous write comes out
        # here, or at the end of training.
        writer = self._writer
        values = None
        if self.restore_best_weights and self._snapshot.captured:
            values = self._snapshot.values
        try:
            with (
                averaged_context(self.model, self.monitor),
                plain_optimizer(self.model),
            ):
                writer.write(self.model, values=values, tag=self.best_epoch)
        except OSError as error:
            self._raise_write_error(error)

    def _poll_writer(self):
        writer = self._writer
        if writer is None or not writer.busy:
            return
        try:
            writer.poll()
        except OSError as error:
            self._raise_write_error(error)

    def _close_writer(self, quiet=False):
        if self._writer is None:
            return
        try:
            self._writer.finish(quiet)
        except OSError as error:
            self._raise_write_error(error)

    def _raise_write_error(self, error):
        # The directory became unwritable (or full) during training. The
        # previous checkpoint was never opened, so it is intact; the model
        # keeps (or gets back) the best weights.
        self._after_error()
        epoch = getattr(error, "tag", None)
        epoch = self.best_epoch if epoch is None else epoch
        raise OSError(
            "EarlyStoppingRestore could not write the best weights of "
            f"epoch {epoch + 1} to `checkpoint_path` "
            f"{self.checkpoint_path!r} (is its directory still "
            "writable?). The file there, if any, still holds an earlier "
            f"best epoch. Cause: {error.__cause__ or error}"
        ) from error

    # -- resume (BackupAndRestore) -----------------------------------------

    def _resume_state(self):
        meta = {
            "monitor": self.monitor,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "seen": self._seen,
            "sign": self._sign,
            "tag": None,
        }
        if self._snapshot.captured:
            meta["tag"] = list(self._snapshot.tag)
        arrays = []
        if self._snapshot.captured:
            from keras_regularize.callbacks._averaging import _numpy

            arrays = [_numpy(v) for v in self._snapshot.values]
        return meta, arrays

    def _resume_load(self, meta, arrays):
        if meta.get("monitor") != self.monitor:
            warnings.warn(
                f"EarlyStoppingRestore(monitor={self.monitor!r}) found the "
                f"saved state of a callback monitoring {meta.get('monitor')!r}"
                " in the backup; starting afresh.",
                stacklevel=2,
            )
            return
        if self._begun:
            self._apply_resume(meta, arrays)
        else:
            self._resume_pending = (meta, arrays)

    def _apply_resume(self, meta, arrays):
        self._reset()
        if meta.get("sign") is not None:
            self._sign = meta["sign"]
        self.best = meta["best"]
        self.best_epoch = meta["best_epoch"]
        self.wait = meta["wait"]
        self._seen = meta["seen"]
        self._resume_done = meta.get("done")
        if meta.get("tag") is not None and arrays:
            self._snapshot.load(self.model, arrays, tag=tuple(meta["tag"]))
