"""Stochastic weight averaging: the mean of the weights at epoch ends."""

import numbers
import warnings

from keras import ops

from keras_regularize._backend import running_mean_update
from keras_regularize._backend import sync_model_state
from keras_regularize._export import export
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize.callbacks._averaging import WeightAveraging
from keras_regularize.callbacks._batch_norm_recalibration import (
    BatchNormRecalibration,
)
from keras_regularize.callbacks._batch_norm_recalibration import (
    batch_norm_layers,
)
from keras_regularize.callbacks._swa_schedule import ANNEAL_STRATEGIES
from keras_regularize.callbacks._swa_schedule import LearningRateControl
from keras_regularize.callbacks._swa_schedule import swa_learning_rate


def _check_swa_lr(value):
    if value is None:
        return None
    return check_number("swa_lr", value, 0.0, low_open=True)


def _check_data(value):
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool, numbers.Number)):
        fail(
            "recalibration_data",
            "None or data `model.predict` accepts (arrays, a tf.data "
            "dataset, a PyDataset, a generator, ...)",
            value,
        )
    return value


@export("keras_regularize.callbacks.StochasticWeightAveraging")
class StochasticWeightAveraging(WeightAveraging):
    """Averages the weights of the last epochs (SWA) during `fit`.

    The average is the equal-weight mean of the trainable weights at the
    end of every epoch `e >= start_epoch` (0-based, inclusive):
    after `n` such epochs, `average = (w_s + ... + w_{s+n-1}) / n`, updated
    as `average += (w - average) / n` in float32 whatever the dtype policy.
    An epoch's weights join the average as soon as its training steps are
    over, before its validation, so `val_swa_*` of epoch `e` includes epoch
    `e`. Before `start_epoch` there is no average: no `val_swa_*` keys, and
    a run that ends before it keeps its raw weights (a `start_epoch` at or
    beyond the last epoch warns at `on_train_begin`).

    **Learning rate.** With `swa_lr`, from `start_epoch` on the learning
    rate of epoch `e` is `swa_lr * a + lr_start * (1 - a)`, with
    `t = min(1, (e - start_epoch) / anneal_epochs)` (`t = 1` when
    `anneal_epochs=0`), `a = (1 - cos(pi t)) / 2` (`"cos"`) or `a = t`
    (`"linear"`), and `lr_start` the learning rate when epoch `start_epoch`
    begins; `swa_lr` is held after `anneal_epochs` epochs. This is torch's
    `SWALR` stepped once per epoch. The rate is changed by assigning a
    variable, never by recompiling. A float learning rate keeps its last
    value after `fit` (as with Keras's `LearningRateScheduler`). A
    `LearningRateSchedule` (or a callable) is followed until `start_epoch`;
    from then on its value at the first step of `start_epoch` is
    `lr_start`, and the schedule is no longer consulted. For that, while
    `fit` runs the optimizer holds a wrapper of the schedule reading two
    variables of its own; the original schedule is back in place, and the
    optimizer's variables as they were, when `fit` ends. With
    `swa_lr=None` the learning rate is left alone.

    **Batch normalization.** The moving statistics of the raw models are
    not those of the averaged weights, so they are recomputed for the
    averaged weights before every averaged evaluation, before a
    checkpoint, and when `fit` puts the averaged weights in place, with
    one pass over `recalibration_data` (anything `model.predict` accepts,
    batched as `model.predict` batches it). The pass runs in inference
    mode (dropout and other random layers off), except that each trainable
    batch-norm layer normalizes with its batch's statistics, as torch's
    `update_bn` does; each layer's new moving mean and variance are the
    mean and (biased) variance of all the inputs it received in that pass,
    every sample counting once (a cumulative equal-weight average, as
    `update_bn` with `momentum=None`). For the first batch-norm layer of a
    path these are exactly its inputs at inference under the averaged
    weights; for a later one, its inputs with the earlier layers
    normalizing by batch, which equal the inference inputs when the data
    comes in one batch. Frozen batch-norm layers (`trainable=False`) keep
    their statistics. A model with trainable batch-norm layers and no
    `recalibration_data` raises a `ValueError` at `on_train_begin`.
    Averaged statistics are never used: only trainable variables are
    averaged, and the raw model keeps its own statistics.

    With `evaluate=True`, each validation also runs under the averaged
    weights and the epoch logs get `val_swa_loss`, `val_swa_<metric>`, ...
    beside `val_loss`, ..., seen by `History`, the progress bar and every
    callback in that epoch, whatever the order of the callbacks. After
    `fit` the model holds the averaged weights (`final="averaged"`) or the
    raw ones; `averaged_weights()` and `raw_weights()` return both.
    `get_state()`/`set_state()` carry the average, the number of averaged
    epochs, the last averaged epoch and `lr_start`, so a run resumed with
    `fit(initial_epoch=...)` continues the same average and learning rate.

    Args:
        start_epoch: Non-negative int. First epoch (0-based) whose final
            weights join the average.
        swa_lr: Optional positive float. Learning rate reached after
            `anneal_epochs` epochs from `start_epoch` on. Defaults to
            `None` (learning rate unchanged).
        anneal_epochs: Non-negative int. Epochs over which the learning
            rate moves to `swa_lr`. Defaults to `0` (`swa_lr` from
            `start_epoch` on).
        anneal_strategy: `"cos"` or `"linear"`. Shape of the annealing.
            Defaults to `"cos"`.
        recalibration_data: Data for the batch-norm pass (anything
            `model.predict` accepts; labels in it are ignored). Required
            when the model has trainable `BatchNormalization` layers;
            ignored otherwise. Defaults to `None`.
        evaluate: Bool. Whether validation also runs under the averaged
            weights (`val_swa_*` keys). Defaults to `True`.
        final: `"averaged"` or `"raw"`: the weights the model holds after
            `fit`. Defaults to `"averaged"`.
        checkpoint_path: Optional path ending in `.weights.h5`. The
            averaged weights (with recalibrated statistics) are written
            there at each epoch end from `start_epoch` on, atomically (as
            `EarlyStoppingRestore` writes its best weights). Defaults to
            `None`.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    >>> swa = keras_regularize.callbacks.StochasticWeightAveraging(
    ...     start_epoch=1, swa_lr=0.01)
    >>> x, y = np.ones((8, 2)), np.zeros((8, 1))
    >>> history = model.fit(x, y, validation_data=(x, y), epochs=3,
    ...                     callbacks=[swa], verbose=0)
    >>> sorted(history.history)
    ['loss', 'val_loss', 'val_swa_loss']
    >>> len(history.history["val_swa_loss"]), swa.get_state()["count"]
    (2, 2)
    >>> round(float(model.optimizer.learning_rate), 4)
    0.01

    References:
        - [Izmailov et al., 2018](https://arxiv.org/abs/1803.05407)
        - [torch `swa_utils`](https://pytorch.org/docs/stable/optim.html#weight-averaging-swa-and-ema)
    """

    prefix = "swa"
    in_step = False

    def __init__(
        self,
        start_epoch,
        swa_lr=None,
        anneal_epochs=0,
        anneal_strategy="cos",
        recalibration_data=None,
        evaluate=True,
        final="averaged",
        checkpoint_path=None,
    ):
        self.start_epoch = check_int("start_epoch", start_epoch, 0)
        self.swa_lr = _check_swa_lr(swa_lr)
        self.anneal_epochs = check_int("anneal_epochs", anneal_epochs, 0)
        self.anneal_strategy = check_choice(
            "anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES
        )
        self.recalibration_data = _check_data(recalibration_data)
        super().__init__(
            evaluate=evaluate, final=final, checkpoint_path=checkpoint_path
        )
        self._lr = LearningRateControl()
        self._recalibration = None
        self._epochs = 0  # host mirror of the count
        self._averaged_epoch = None
        self._lr_start = None
        self._recalibrated_for = None  # the count of the last pass
        self._epoch = None

    # -- Keras hooks -------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        if self.swa_lr is not None and not self._fitting:
            if self._lr.install(model):
                # A step built before now would not read the wrapper.
                model.train_function = None

    def on_train_begin(self, logs=None):
        model = self.model
        layers = batch_norm_layers(model)
        if layers and self.recalibration_data is None:
            self._lr.remove()
            fail(
                "recalibration_data",
                "data to recompute the batch-norm statistics of the "
                f"averaged weights: the model has {len(layers)} trainable "
                "BatchNormalization layer(s) (e.g. the training inputs)",
                None,
            )
        if self._recalibration is None or self._recalibration.model is not (
            model
        ):
            self._recalibration = (
                BatchNormRecalibration(model, layers) if layers else None
            )
        epochs = (self.params or {}).get("epochs")
        if epochs is not None and self.start_epoch >= epochs:
            warnings.warn(
                f"StochasticWeightAveraging(start_epoch={self.start_epoch}) "
                f"starts after the last epoch of this fit (epochs={epochs}, "
                f"0-based: the last is {epochs - 1}): no epoch will be "
                "averaged and the model keeps its raw weights.",
                stacklevel=2,
            )
        self._epochs = 0
        self._averaged_epoch = None
        self._lr_start = None
        self._recalibrated_for = None
        self._epoch = None
        if self.swa_lr is not None:
            self._lr.install(model)
        try:
            super().on_train_begin(logs)
        except BaseException:
            self._lr.remove()
            raise

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.swa_lr is None or epoch < self.start_epoch:
            return
        if self._lr_start is None:
            self._lr_start = self._lr.current()
        self._lr.set(
            swa_learning_rate(
                epoch,
                self.start_epoch,
                self._lr_start,
                self.swa_lr,
                self.anneal_epochs,
                self.anneal_strategy,
            )
        )

    def _before_validation(self):
        self._average_epoch()

    def on_epoch_end(self, epoch, logs=None):
        self._average_epoch(epoch)
        if (
            self.checkpoint_path is not None
            and self._ready()
            and self._recalibration is not None
            and self._recalibrated_for != self._epochs
        ):
            # Recalibrate once for this average, so the checkpoint (which
            # reuses the last recalibrated statistics) matches it.
            with self._swapped(run_hook=True):
                pass
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        try:
            super().on_train_end(logs)
        finally:
            self._lr.remove()
            if self.swa_lr is not None and self.model is not None:
                self.model.train_function = None

    # -- averaging ---------------------------------------------------------

    def _average_epoch(self, epoch=None):
        """Adds the weights in place to the average, once per epoch."""
        epoch = self._epoch if epoch is None else epoch
        if epoch is None or epoch < self.start_epoch:
            return
        if self._averaged_epoch is not None and epoch <= self._averaged_epoch:
            return
        sync_model_state(self._owner)
        n = self._epochs
        if n == 0:
            for average, source in zip(self._averages, self._sources):
                average.assign(ops.copy(ops.cast(source.value, "float32")))
        else:
            running_mean_update(self._averages, self._sources, 1.0 / (n + 1))
        self._epochs = n + 1
        self._count.assign(self._epochs)
        self._averaged_epoch = epoch

    def _ready(self):
        return self._epochs > 0

    def _after_swap_in(self):
        if self._recalibration is None:
            return
        self._recalibration.run(self.recalibration_data)
        self._recalibrated_for = self._epochs

    # -- state -------------------------------------------------------------

    def _extra_state(self):
        return {
            "averaged_epoch": self._averaged_epoch,
            "lr_start": self._lr_start,
        }

    def _load_extra_state(self, state):
        self._epochs = int(state["count"])
        self._averaged_epoch = state.get("averaged_epoch")
        self._lr_start = state.get("lr_start")
