"""Knowledge-distillation loss: tempered KL to a teacher plus hard-label CE."""

from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_number


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


def cross_entropy_per_sample(student_outputs, labels, from_logits=True):
    """Cross-entropy with integer labels, or one-hot/soft labels."""
    log_p = _log_probs(student_outputs, from_logits)
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == len(log_p.shape) and labels.shape[-1] != 1:
        return -ops.sum(ops.cast(labels, "float32") * log_p, axis=-1)
    if len(labels.shape) == len(log_p.shape):
        labels = ops.squeeze(labels, axis=-1)
    one_hot = ops.one_hot(ops.cast(labels, "int32"), log_p.shape[-1])
    return -ops.sum(one_hot * log_p, axis=-1)


def weighted_mean(values, sample_weight=None):
    """`sum(w * values) / batch_size`, Keras's `sum_over_batch_size`."""
    if sample_weight is None:
        return ops.mean(values)
    weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.sum(values * weight) / ops.cast(ops.shape(values)[0], "float32")


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
        temperature: Float > 0. Softmax temperature `T` of the soft term.
            Defaults to `4.0`.
        alpha: Float in `[0, 1]`. Weight of the soft term; the hard-label
            term gets `1 - alpha`. Defaults to `0.7`.
        from_logits: Bool. Whether student and teacher outputs are logits
            (`True`) or probabilities. Defaults to `True`.

    Call arguments:
        student_logits: Tensor `(batch, classes)`.
        teacher_logits: Tensor `(batch, classes)`, or a list of them.
        labels: Integer labels `(batch,)` or `(batch, 1)`, or one-hot/soft
            labels `(batch, classes)`.
        sample_weight: Optional `(batch,)` weights applied to both terms
            (`sum(w * loss) / batch`).

    Example:

    >>> loss = keras_regularize.losses.DistillationLoss(temperature=4.0)
    >>> s = np.array([[2.0, 1.0, 0.1]])
    >>> t = np.array([[3.0, 0.5, -1.0]])
    >>> round(float(loss.distillation(s, t)), 4)
    0.4047

    References:
        - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
    """

    def __init__(self, temperature=4.0, alpha=0.7, from_logits=True):
        self.temperature = check_number(
            "temperature", temperature, 0.0, low_open=True
        )
        self.alpha = check_number("alpha", alpha, 0.0, 1.0)
        if not isinstance(from_logits, bool):
            raise ValueError(
                "Invalid value received for argument `from_logits`. Expected "
                f"a bool. Received: from_logits={from_logits!r}"
            )
        self.from_logits = from_logits

    def distillation(self, student_logits, teacher_logits, sample_weight=None):
        """The soft term alone: batch mean of `T^2 * KL`, without `alpha`."""
        targets = soft_targets(
            teacher_logits, self.temperature, self.from_logits
        )
        values = kl_per_sample(
            student_logits, targets, self.temperature, self.from_logits
        )
        return weighted_mean(values, sample_weight)

    def hard(self, student_logits, labels, sample_weight=None):
        """The hard-label term alone: batch mean cross-entropy."""
        values = cross_entropy_per_sample(
            student_logits, labels, self.from_logits
        )
        return weighted_mean(values, sample_weight)

    def __call__(
        self, student_logits, teacher_logits, labels, sample_weight=None
    ):
        soft = self.distillation(student_logits, teacher_logits, sample_weight)
        hard = self.hard(student_logits, labels, sample_weight)
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
