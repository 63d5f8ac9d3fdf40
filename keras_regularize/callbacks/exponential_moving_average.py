"""An exponential moving average of the weights, updated inside the step."""

from keras import ops

from keras_regularize import _backend
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_number
from keras_regularize.callbacks._averaging import WeightAveraging


@export("keras_regularize.callbacks.ExponentialMovingAverage")
class ExponentialMovingAverage(WeightAveraging):
    """Keeps an exponential moving average (EMA) of the weights during `fit`.

    The average starts equal to the trainable weights when `fit` starts.
    After every optimizer step `t = 1, 2, ...` it becomes
    `d_t * average + (1 - d_t) * w_t`, with `d_t = decay`, or, with
    `warmup=True`, `d_t = min(decay, (1 + t) / (10 + t))` (so early steps,
    when the weights move fast, weigh more). The update runs inside the
    compiled training step right after the optimizer's update, on every
    backend and under `jit_compile=True`, with no copy to the host; a step
    skipped by `LossScaleOptimizer` (non-finite gradients) or a gradient
    accumulation step that does not update the weights leaves the average
    and `t` unchanged. `t` counts the steps since the average started:
    each `fit` starts a new average from the weights in place then (with
    `t = 0`), unless `set_state` was called before it, in which case that
    average and its `t` continue.

    Only trainable variables are averaged (in float32, whatever the dtype
    policy). Non-trainable state, such as batch-norm moving statistics, is
    not: the averaged model uses the raw model's current statistics (as
    Keras's `use_ema` and TF-Addons' `MovingAverage` do). Integer variables
    (seed states) and frozen layers (a `Distiller`'s teachers) are never
    touched.

    With `evaluate=True`, each validation also runs under the averaged
    weights, and the epoch logs get `val_ema_loss`, `val_ema_<metric>`, ...
    beside `val_loss`, ... before any callback's `on_epoch_end`, so
    `History`, the progress bar and `EarlyStoppingRestore(monitor=
    "val_ema_loss")` see them in the same epoch, whatever the order of the
    callbacks. The raw weights are back in place before the next epoch.
    `EarlyStoppingRestore` monitoring a `val_ema_*` key keeps (and
    restores) the averaged weights of its best epoch.

    After `fit`, the model holds the averaged weights (`final="averaged"`)
    or the raw ones (`final="raw"`); `averaged_weights()` and
    `raw_weights()` return both, whichever is in place. `get_state()` and
    `set_state()` save and restore the average and `t` (NumPy values).

    While `fit` runs, the averages and `t` are variables of the model's
    (innermost) optimizer, so a file saved during `fit` with the
    optimizer's state holds them too.

    Args:
        decay: Float in `(0, 1)`. Weight of the old average at each step.
            Defaults to `0.999`.
        warmup: Bool. Whether `d_t = min(decay, (1 + t) / (10 + t))`
            (timm's `ModelEmaV3` warmup) instead of `decay` at every step.
            Defaults to `True`.
        evaluate: Bool. Whether validation also runs under the averaged
            weights (`val_ema_*` keys). Defaults to `True`.
        final: `"averaged"` or `"raw"`: the weights the model holds after
            `fit`. Defaults to `"averaged"`.
        checkpoint_path: Optional path ending in `.weights.h5`. The
            averaged weights are written there at each epoch end,
            atomically (as `EarlyStoppingRestore` writes its best weights).
            Defaults to `None`.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> ema = keras_regularize.callbacks.ExponentialMovingAverage(decay=0.9)
    >>> x, y = np.ones((8, 2)), np.zeros((8, 1))
    >>> history = model.fit(x, y, validation_data=(x, y), epochs=1,
    ...                     callbacks=[ema], verbose=0)
    >>> sorted(history.history)
    ['loss', 'val_ema_loss', 'val_loss']
    >>> ema.get_state()["count"]  # optimizer steps averaged
    1

    References:
        - [Polyak & Juditsky, 1992](https://doi.org/10.1137/0330046)
        - [timm `ModelEmaV3`](https://github.com/huggingface/pytorch-image-models/blob/main/timm/utils/model_ema.py)
    """

    prefix = "ema"
    in_step = True

    def __init__(
        self,
        decay=0.999,
        warmup=True,
        evaluate=True,
        final="averaged",
        checkpoint_path=None,
    ):
        self.decay = check_number(
            "decay", decay, 0.0, 1.0, low_open=True, high_open=True
        )
        self.warmup = check_bool("warmup", warmup)
        super().__init__(
            evaluate=evaluate, final=final, checkpoint_path=checkpoint_path
        )

    def _in_step_update(self, stepped):
        count = self._count.value
        t = ops.add(count, 1)
        if stepped is not None:
            t = ops.where(stepped, t, count)
        decay = ops.convert_to_tensor(self.decay, "float32")
        if self.warmup:
            tf = ops.cast(t, "float32")
            decay = ops.minimum(decay, (1.0 + tf) / (10.0 + tf))
        if stepped is not None:
            decay = ops.where(stepped, decay, 1.0)
        for average, source in zip(self._averages, self._sources):
            value = ops.cast(source, "float32")
            average.assign(_backend.blend(average.value, value, decay))
        self._count.assign(t)

    @property
    def steps(self):
        """`t`: the optimizer steps averaged so far."""
        if self._count is None:
            return 0
        return self._read_count()
