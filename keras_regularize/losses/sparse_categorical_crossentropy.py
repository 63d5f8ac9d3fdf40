"""Cross-entropy on integer labels, with label smoothing.

Paper: Rethinking the Inception Architecture for Computer Vision
(https://arxiv.org/abs/1512.00567), section 7.
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number


@export("keras_regularize.losses.SparseCategoricalCrossentropy")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy between integer labels and predictions, with smoothing.

    With `label_smoothing = e` and `K` classes, the target of a sample with
    label `y` is `(1 - e) * one_hot(y) + e / K`, the same smoothed target as
    `keras.losses.CategoricalCrossentropy(label_smoothing=e)` builds from
    one-hot labels, so both losses agree on the same data. The one-hot
    matrix is never built: the loss is computed as
    `-(1 - e) * log p[y] - e / K * sum_k log p[k]`, which costs one gather
    and one sum however many classes there are.

    Probabilities (`from_logits=False`) are renormalized to sum to 1 and
    clipped to `[epsilon, 1 - epsilon]` before the log, as Keras does.

    Args:
        label_smoothing: Float in `[0, 1]`. Defaults to `0.0` (plain
            sparse categorical cross-entropy).
        from_logits: Bool. Whether `y_pred` holds logits rather than
            probabilities. Defaults to `False`.
        axis: Int. The class axis of `y_pred`. Defaults to `-1`.
        reduction: As for any `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: Optional name. Defaults to
            `"sparse_categorical_crossentropy"`.
        dtype: Dtype the loss is computed in. Defaults to `None` (the
            global float type, float32 under mixed precision).

    Call arguments:
        y_true: Integer class indices of shape `(B, ...)`, or `(B, ..., 1)`.
        y_pred: Probabilities or logits of shape `(B, ..., K)`.
        sample_weight: Optional per-sample weights.

    Example:

    >>> loss = keras_regularize.losses.SparseCategoricalCrossentropy(
    ...     label_smoothing=0.1, from_logits=True)
    >>> logits = np.array([[2.0, 0.5, -1.0]], "float32")
    >>> reference = keras.losses.CategoricalCrossentropy(
    ...     label_smoothing=0.1, from_logits=True)
    >>> a = float(loss(np.array([0]), logits))
    >>> b = float(reference(np.array([[1.0, 0.0, 0.0]]), logits))
    >>> abs(a - b) < 1e-6
    True

    References:
        - [Szegedy et al., 2016](https://arxiv.org/abs/1512.00567)
        - [Muller et al., 2019](https://arxiv.org/abs/1906.02629)
    """

    def __init__(
        self,
        label_smoothing=0.0,
        from_logits=False,
        axis=-1,
        reduction="sum_over_batch_size",
        name="sparse_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = check_number(
            "label_smoothing", label_smoothing, 0.0, 1.0
        )
        self.from_logits = bool(from_logits)
        self.axis = check_int("axis", axis)

    def call(self, y_true, y_pred):
        axis = self.axis % len(y_pred.shape)
        if axis != len(y_pred.shape) - 1:
            y_pred = ops.moveaxis(y_pred, axis, -1)
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        labels = ops.cast(y_true, "int32")
        if self.from_logits:
            log_probs = ops.log_softmax(y_pred, axis=-1)
        else:
            probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
            eps = keras.config.epsilon()
            log_probs = ops.log(ops.clip(probs, eps, 1.0 - eps))
        picked = ops.take_along_axis(
            log_probs, ops.expand_dims(labels, -1), axis=-1
        )
        picked = ops.squeeze(picked, axis=-1)
        smoothing = self.label_smoothing
        if smoothing == 0.0:
            return -picked
        uniform = ops.mean(log_probs, axis=-1)
        return -(1.0 - smoothing) * picked - smoothing * uniform

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
            "axis": self.axis,
        }
