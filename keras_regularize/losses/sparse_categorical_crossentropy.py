"""Cross-entropy on integer labels, with label smoothing.

Paper: Rethinking the Inception Architecture for Computer Vision
(https://arxiv.org/abs/1512.00567), section 7.
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import fail_shape
from keras_regularize._value_checks import require


def class_id_validity(labels, num_classes, name="y_true"):
    """Checks integer class ids; returns the ids clipped and a validity mask.

    An id is valid when it is an integer in `[0, num_classes)`. Where the
    values are known (eager code), an invalid id raises a `ValueError`
    naming it; a TensorFlow graph (`tf.function`, `tf.data`) raises
    `InvalidArgumentError` with the same message. Inside a traced JAX or
    XLA step no data-dependent error can be raised:
    the caller must then turn the loss of every invalid position into NaN
    with the returned mask, so a bad label never yields a finite loss. The
    returned ids are clipped into range, so gathers stay defined.
    """
    labels = ops.convert_to_tensor(labels)
    is_float = "float" in str(ops.dtype(labels))
    if is_float:
        whole = ops.equal(labels, ops.floor(labels))
    valid = ops.logical_and(
        ops.greater_equal(labels, 0), ops.less(labels, num_classes)
    )
    if is_float:
        valid = ops.logical_and(valid, whole)
    expected = (
        f"integer class indices in [0, {num_classes - 1}] "
        f"({num_classes} classes); the first offending entry is shown"
    )
    labels = require(valid, labels, name, expected, guard=labels)
    ids = ops.cast(ops.where(valid, labels, ops.zeros_like(labels)), "int32")
    return ids, valid


def nan_where_invalid(values, valid):
    """`values` with NaN wherever `valid` is False."""
    nan = ops.full_like(values, float("nan"))
    return ops.where(valid, values, nan)


def _shape(x):
    return tuple(x.shape)


def _same_dims(a, b):
    return len(a) == len(b) and all(
        p is None or q is None or p == q for p, q in zip(a, b)
    )


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
        from_logits: Python bool (`True` or `False` only). Whether `y_pred`
            holds logits rather than probabilities. Defaults to `False`.
        axis: Int. The class axis of `y_pred`. Defaults to `-1`.
        reduction: As for any `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: Optional name. Defaults to
            `"sparse_categorical_crossentropy"`.
        dtype: Dtype the loss is computed in. Defaults to `None` (the
            global float type, float32 under mixed precision).

    Out-of-range labels: every label must be an integer in `[0, K)`. A
    label outside it (`K`, `-1`, `2.5`, NaN) raises a `ValueError` naming
    the first offending value wherever its value is known when the loss is
    called: eager calls on every backend, including a torch `fit` (compiled
    or not). Inside a traced step (a JAX or TensorFlow `fit`, `tf.function`,
    `jit_compile=True`) no data-dependent error can be raised; there the
    loss of each such position is NaN, so the batch loss is NaN rather than
    a plausible finite number (Keras's own loss gives NaN for `K` and wraps
    `-1` to class `K - 1` on JAX). Use a callback such as
    `keras.callbacks.TerminateOnNaN` to stop such a fit.

    Call arguments:
        y_true: Integer class indices of the shape of `y_pred` without its
            class axis, e.g. `(B,)` or `(B, H, W)`, or of that shape with a
            size-1 axis in the class position: `(B, 1)` for `axis=-1`,
            `(B, 1, H, W)` for `axis=1` and `y_pred` of shape
            `(B, K, H, W)`.
        y_pred: Probabilities or logits with `K` classes along `axis`, e.g.
            `(B, ..., K)`.
        sample_weight: Optional per-sample weights.

    Example:

    >>> loss = keras_regularize.losses.SparseCategoricalCrossentropy(
    ...     label_smoothing=0.1, from_logits=True)
    >>> labels = np.array([0, 2])
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], "float32")
    >>> round(float(loss(labels, logits)), 4)
    0.3431

    It is a drop-in `loss` for integer labels:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer="adam", loss=loss)

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
        self.from_logits = check_bool("from_logits", from_logits)
        self.axis = check_int("axis", axis)

    def call(self, y_true, y_pred):
        rank = len(y_pred.shape)
        if not -rank <= self.axis < rank:
            fail_shape(
                "y_pred",
                f"a tensor with an axis {self.axis} (the `axis` argument)",
                _shape(y_pred),
            )
        axis = self.axis % rank
        expected = _shape(y_pred)[:axis] + _shape(y_pred)[axis + 1 :]
        if len(y_true.shape) == rank and y_true.shape[axis] == 1:
            # Labels with a size-1 class axis, e.g. (B, 1) or (B, 1, H, W)
            # with `axis=1`: drop that axis, as Keras does.
            y_true = ops.squeeze(y_true, axis=axis)
        if not _same_dims(_shape(y_true), expected):
            fail_shape(
                "y_true",
                "one class index per position of `y_pred` without its class "
                f"axis ({axis}): shape {expected}, or that shape with a "
                f"size-1 axis at {axis} (y_true.shape={_shape(y_true)} does "
                f"not fit y_pred.shape={_shape(y_pred)})",
                _shape(y_true),
            )
        if axis != rank - 1:
            y_pred = ops.moveaxis(y_pred, axis, -1)
        num_classes = y_pred.shape[-1]
        labels, valid = class_id_validity(y_true, num_classes)
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
            values = -picked
        else:
            uniform = ops.mean(log_probs, axis=-1)
            values = -(1.0 - smoothing) * picked - smoothing * uniform
        return nan_where_invalid(values, valid)

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
            "axis": self.axis,
        }
