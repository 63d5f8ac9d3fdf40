"""Puts the gradient norms a `GradientClipping` optimizer records into logs."""

import keras

from keras_regularize._backend import sync_model_state
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize.optimizers.gradient_clipping import GradientClipping


def find_gradient_clipping(optimizer):
    """The `GradientClipping` in a chain of wrapping optimizers, or `None`."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if isinstance(optimizer, GradientClipping):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


@export("keras_regularize.callbacks.GradientNormLogger")
class GradientNormLogger(keras.callbacks.Callback):
    """Logs the gradient norm and clip rate a `GradientClipping` records.

    At the end of every epoch it adds to `logs` (and so to `History` and
    the progress bar) the mean and maximum pre-clip global gradient norm of
    the epoch's steps, `"grad_norm"` and `"grad_norm_max"`, and the fraction
    of those steps that clipped, `"clip_rate"`; with `method="auto"` also
    the latest `"clip_threshold"`. With `per_batch=True` every batch's logs
    get that step's `"grad_norm"` as well; on JAX this copies the training
    state back to the model after every batch, which slows training.

    The model's optimizer must be a
    `keras_regularize.optimizers.GradientClipping`, possibly inside other
    wrappers such as `LossScaleOptimizer` or `GradientNoise`. Use
    `method="none"` to watch the norms without clipping, then pick a
    threshold a few times the typical norm.

    Args:
        per_batch: Bool. Whether to add `"grad_norm"` to every batch's logs.
            Defaults to `False`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(
    ...     optimizer=keras_regularize.optimizers.GradientClipping(
    ...         keras.optimizers.SGD(0.1), method="none"),
    ...     loss="mse")
    >>> history = model.fit(
    ...     np.ones((8, 3)), np.ones((8, 1)), epochs=2, verbose=0,
    ...     callbacks=[keras_regularize.callbacks.GradientNormLogger()])
    >>> sorted(history.history)
    ['clip_rate', 'grad_norm', 'grad_norm_max', 'loss']
    >>> history.history["clip_rate"]  # method="none" never clips
    [0.0, 0.0]
    """

    def __init__(self, per_batch=False):
        super().__init__()
        self.per_batch = check_bool("per_batch", per_batch)
        self._clipping = None

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        clipping = find_gradient_clipping(optimizer)
        if clipping is None:
            raise ValueError(
                "GradientNormLogger needs the model to be compiled with a "
                "`keras_regularize.optimizers.GradientClipping` optimizer "
                "(possibly wrapped, e.g. in a `LossScaleOptimizer`); use "
                '`method="none"` to record norms without clipping. '
                f"Received: optimizer={optimizer!r}"
            )
        self._clipping = clipping

    def on_epoch_begin(self, epoch, logs=None):
        self._clipping.reset_statistics()

    def on_train_batch_end(self, batch, logs=None):
        if not self.per_batch or logs is None:
            return
        sync_model_state(self.model)
        logs["grad_norm"] = self._clipping.norm_statistics()["grad_norm"]

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        stats = self._clipping.norm_statistics()
        if not stats["steps"]:
            return
        logs["grad_norm"] = stats["grad_norm_mean"]
        logs["grad_norm_max"] = stats["grad_norm_max"]
        logs["clip_rate"] = stats["clip_rate"]
        if "clip_threshold" in stats:
            logs["clip_threshold"] = stats["clip_threshold"]
