"""Knowledge-distillation loss: tempered KL to a teacher plus hard-label CE."""

import numpy as np
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_number
from keras_regularize._validation import fail_shape
from keras_regularize.losses.sparse_categorical_crossentropy import (
    class_id_validity,
)
from keras_regularize.losses.sparse_categorical_crossentropy import (
    nan_where_invalid,
)


def _shape(x):
    return tuple(x.shape)


def _same_dims(a, b):
    return len(a) == len(b) and all(
        p is None or q is None or p == q for p, q in zip(a, b)
    )


def as_tensor(name, x, floating=True):
    """`x` as a tensor, refusing structures and non-numeric dtypes.

    Refuses with a `ValueError` on every backend, before any computation,
    so a bad input never surfaces as a backend-specific `TypeError`.
    """
    if x is None or isinstance(x, (dict, str, bytes)):
        raise ValueError(
            f"`{name}` must be a tensor or array. Received: "
            f"{name} of type {type(x).__name__}"
        )
    if not ops.is_tensor(x):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`{name}` must be a tensor or array. Received: {name} of "
                f"type {type(x).__name__} ({e})"
            ) from None
        if x.dtype.kind not in "biuf":
            raise ValueError(
                f"`{name}` must hold numbers. Received: {name} with dtype "
                f"{x.dtype}"
            )
    dtype = str(ops.dtype(x))
    if floating and "float" not in dtype:
        raise ValueError(
            f"`{name}` must be of a floating-point dtype (logits or "
            f"probabilities). Received: {name} with dtype={dtype}"
        )
    if not floating and dtype == "bool":
        raise ValueError(
            f"`{name}` must hold integer class ids or float one-hot/soft "
            f"labels. Received: {name} with dtype={dtype}"
        )
    return ops.convert_to_tensor(x)


def check_outputs(
    student_outputs,
    teacher_outputs,
    student_name="student_logits",
    teacher_name="teacher_logits",
):
    """Validates student and teacher outputs; returns them as tensors.

    The student's outputs must be a float tensor of rank >= 2 (batch first,
    classes last), and every teacher's the same shape, so nothing is
    broadcast silently. `teacher_outputs` is a tensor or a list of them.
    Raises a `ValueError` naming both shapes on a mismatch.
    """
    student_outputs = as_tensor(student_name, student_outputs)
    if len(student_outputs.shape) < 2:
        fail_shape(
            student_name,
            "a tensor of rank >= 2 (batch, ..., classes)",
            _shape(student_outputs),
        )
    single = not isinstance(teacher_outputs, (list, tuple))
    items = [teacher_outputs] if single else list(teacher_outputs)
    if not items:
        raise ValueError(
            f"`{teacher_name}` must be a tensor or a non-empty list of "
            f"tensors. Received: {teacher_name}=[]"
        )
    checked = []
    for i, t in enumerate(items):
        name = teacher_name if single else f"{teacher_name}[{i}]"
        t = as_tensor(name, t)
        if not _same_dims(_shape(t), _shape(student_outputs)):
            fail_shape(
                name,
                f"the shape of `{student_name}` ({student_name}.shape="
                f"{_shape(student_outputs)} and {name}.shape={_shape(t)} "
                "differ)",
                _shape(t),
            )
        checked.append(t)
    return student_outputs, checked


def _log_probs(outputs, from_logits):
    """Log-probabilities over the last axis, in float32."""
    outputs = ops.cast(outputs, "float32")
    if from_logits:
        return ops.log_softmax(outputs, axis=-1)
    return ops.log(ops.clip(outputs, 1e-7, 1.0))


def soft_targets(teacher_outputs, temperature, from_logits=True):
    """Log of the teachers' mean probabilities at `temperature`.

    `teacher_outputs` is one tensor or a list (an ensemble). Probabilities,
    not logits, are averaged: `log(mean_i softmax(t_i / T))` is computed as a
    log-sum-exp of log-softmaxes, so it stays finite for logits of any size.
    """
    if not isinstance(teacher_outputs, (list, tuple)):
        teacher_outputs = [teacher_outputs]
    logs = [
        _log_probs(_temper(t, temperature, from_logits), True)
        for t in teacher_outputs
    ]
    if len(logs) == 1:
        return logs[0]
    stacked = ops.stack(logs, axis=0)
    return ops.logsumexp(stacked, axis=0) - ops.log(float(len(logs)))


def _temper(outputs, temperature, from_logits):
    # Logits divided by T; probabilities go through their logs first (log p
    # is a valid logit vector for the same distribution).
    logits = outputs if from_logits else _log_probs(outputs, False)
    return ops.cast(logits, "float32") / ops.cast(temperature, "float32")


def kl_per_sample(student_outputs, log_targets, temperature, from_logits=True):
    """`T^2 * KL(targets || softmax(student / T))` for each sample."""
    log_student = _log_probs(
        _temper(student_outputs, temperature, from_logits), True
    )
    kl = ops.sum(ops.exp(log_targets) * (log_targets - log_student), axis=-1)
    t = ops.cast(temperature, "float32")
    return t * t * kl


def cross_entropy_per_sample(
    student_outputs, labels, from_logits=True, name="labels"
):
    """Cross-entropy with integer labels, or one-hot/soft labels.

    Integer labels have the outputs' shape without the class axis, or with
    a size-1 class axis; one-hot/soft labels the outputs' shape. Integer
    labels out of `[0, classes)` raise a `ValueError` where their values are
    known and give NaN inside a traced step.
    """
    log_p = _log_probs(student_outputs, from_logits)
    labels = as_tensor(name, labels, floating=False)
    received = _shape(labels)
    out_shape = _shape(log_p)
    classes = out_shape[-1]
    rank = len(out_shape)
    if len(labels.shape) == rank and labels.shape[-1] != 1:
        if not _same_dims(_shape(labels), out_shape):
            fail_shape(
                name,
                f"one-hot or soft labels of the outputs' shape {out_shape}, "
                f"or integer labels of shape {out_shape[:-1]} or "
                f"{out_shape[:-1] + (1,)}",
                received,
            )
        return -ops.sum(ops.cast(labels, "float32") * log_p, axis=-1)
    if len(labels.shape) == rank:
        labels = ops.squeeze(labels, axis=-1)
    if not _same_dims(_shape(labels), out_shape[:-1]):
        fail_shape(
            name,
            f"integer labels of shape {out_shape[:-1]} or "
            f"{out_shape[:-1] + (1,)}, or one-hot or soft labels of the "
            f"outputs' shape {out_shape}",
            received,
        )
    ids, valid = class_id_validity(labels, classes, name)
    picked = ops.take_along_axis(log_p, ops.expand_dims(ids, -1), axis=-1)
    return nan_where_invalid(-ops.squeeze(picked, axis=-1), valid)


def weighted_mean(values, sample_weight=None, name="sample_weight"):
    """`sum(w * values) / values.size`, Keras's `sum_over_batch_size`.

    `sample_weight` is a scalar, one weight per sample (`(batch,)` or
    `(batch, 1)`), or one per value. An empty batch gives `0.0`.
    """
    count = ops.cast(ops.size(values), "float32")
    if sample_weight is None:
        return ops.divide_no_nan(ops.sum(values), count)
    weight = as_tensor(name, sample_weight, floating=False)
    weight = ops.cast(weight, "float32")
    shape = _shape(values)
    if len(weight.shape) == len(shape) + 1 and weight.shape[-1] == 1:
        weight = ops.squeeze(weight, axis=-1)
    while 0 < len(weight.shape) < len(shape):
        weight = ops.expand_dims(weight, -1)
    if len(weight.shape) and not (
        len(weight.shape) == len(shape)
        and all(
            w is None or v is None or w in (1, v)
            for w, v in zip(weight.shape, shape)
        )
    ):
        fail_shape(
            name,
            "a scalar, one weight per sample (shape "
            f"{shape[:1]} or {shape[:1] + (1,)}) or one per value",
            _shape(ops.convert_to_tensor(sample_weight)),
        )
    return ops.divide_no_nan(ops.sum(values * weight), count)


@export("keras_regularize.losses.DistillationLoss")
class DistillationLoss:
    """Hinton-style distillation loss with temperature, stable for any logits.

    Computes, averaged over the batch,

    `alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
    + (1 - alpha) * CE(student, labels)`.

    Everything is computed from log-softmaxes in float32, so logits of
    magnitude `1e3` give finite, exact values. The `T^2` factor keeps the
    gradient of the soft term on the scale of the hard term as `T` grows.
    Given a list of teacher outputs (an ensemble), the teachers'
    probabilities at temperature `T` are averaged.

    Args:
        temperature: Finite float > 0. Softmax temperature `T` of the soft
            term. Defaults to `4.0`.
        alpha: Float in `[0, 1]`. Weight of the soft term; the hard-label
            term gets `1 - alpha`. Defaults to `0.7`.
        from_logits: Python bool (`True` or `False` only). Whether student
            and teacher outputs are logits (`True`) or probabilities.
            Defaults to `True`.

    Call arguments:
        student_logits: Float tensor `(batch, classes)` (or
            `(batch, ..., classes)`).
        teacher_logits: Float tensor of exactly the student's shape, or a
            list of them. Nothing is broadcast: a teacher of another shape
            raises a `ValueError` naming both shapes.
        labels: Integer labels `(batch,)` or `(batch, 1)`, or one-hot/soft
            labels `(batch, classes)`. An integer label outside
            `[0, classes)` raises a `ValueError` naming it where its value
            is known (eager calls); inside a traced step (`jit`,
            `tf.function`) the loss is NaN instead, never a finite number.
        sample_weight: Optional `(batch,)` weights applied to both terms
            (`sum(w * loss) / batch`).

    Every input is checked (structure, rank, shape, dtype) before anything
    is computed, and a bad one raises a `ValueError` on every backend. An
    empty batch gives a loss of `0.0`.

    Example:

    >>> loss = keras_regularize.losses.DistillationLoss(
    ...     temperature=4.0, alpha=0.7)
    >>> student = np.array([[2.0, 1.0, 0.1], [0.0, 1.0, 0.0]], "float32")
    >>> teacher = np.array([[3.0, 0.5, -1.0], [0.0, 2.0, 0.5]], "float32")
    >>> labels = np.array([0, 1])
    >>> round(float(loss(student, teacher, labels)), 4)
    0.3166
    >>> round(float(loss.distillation(student, teacher)), 4)  # soft term
    0.2447
    >>> round(float(loss.hard(student, labels)), 4)  # cross-entropy term
    0.4842

    References:
        - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
    """

    def __init__(self, temperature=4.0, alpha=0.7, from_logits=True):
        self.temperature = check_number(
            "temperature", temperature, 0.0, low_open=True
        )
        self.alpha = check_number("alpha", alpha, 0.0, 1.0)
        self.from_logits = check_bool("from_logits", from_logits)

    def distillation(self, student_logits, teacher_logits, sample_weight=None):
        """The soft term alone: batch mean of `T^2 * KL`, without `alpha`."""
        student_logits, teachers = check_outputs(student_logits, teacher_logits)
        targets = soft_targets(teachers, self.temperature, self.from_logits)
        values = kl_per_sample(
            student_logits, targets, self.temperature, self.from_logits
        )
        return weighted_mean(values, sample_weight)

    def hard(self, student_logits, labels, sample_weight=None):
        """The hard-label term alone: batch mean cross-entropy."""
        student_logits, _ = check_outputs(student_logits, student_logits)
        values = cross_entropy_per_sample(
            student_logits, labels, self.from_logits
        )
        return weighted_mean(values, sample_weight)

    def __call__(
        self, student_logits, teacher_logits, labels, sample_weight=None
    ):
        # Every input is checked (rank, shape, dtype) before the soft term
        # is computed: the hard term validates labels and weights first.
        check_outputs(student_logits, teacher_logits)
        hard = self.hard(student_logits, labels, sample_weight)
        soft = self.distillation(student_logits, teacher_logits, sample_weight)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def get_config(self):
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "from_logits": self.from_logits,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
