"""Knowledge distillation as a `keras.Model`: ensembles, cache, self-distill."""

import keras
import numpy as np
from keras import ops

from keras_regularize._backend import replicas_in_sync
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize._variables import ScalarVariable
from keras_regularize.losses.distillation_loss import check_outputs
from keras_regularize.losses.distillation_loss import cross_entropy_per_sample
from keras_regularize.losses.distillation_loss import kl_per_sample
from keras_regularize.losses.distillation_loss import soft_targets
from keras_regularize.losses.distillation_loss import weighted_mean

# Keys of the input dict that `fit` builds when teacher outputs are cached:
# the user's inputs and the teachers' logits travel as rows of one structure,
# so shuffling or splitting moves them together.
_INPUTS = "distiller_inputs"
_CACHED = "distiller_teacher_outputs"


def _output_shape(model):
    """The model's output shape without the batch axis, or None if unknown."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(shape, list):
        return None
    return tuple(shape[1:])


def _is_in_memory(x):
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or ops.is_tensor(leaf) for leaf in leaves
    )


def _refuse_positional(cls, args):
    received = ", ".join(
        repr(a.name) if isinstance(a, keras.Model) else type(a).__name__
        for a in args
    )
    raise TypeError(
        f"{cls.__name__} takes `student` and `teacher` as keyword arguments "
        f"only: call `{cls.__name__}(student=..., teacher=...)`. The two "
        "orders differ between libraries (keras_regularize 0.1.0 took "
        "`(student, teacher)`, `keras.distillation.Distiller` takes "
        "`(teacher, student)`), so a positional call is easily swapped. "
        f"Received {len(args)} positional argument(s): {received}"
    )


def check_temperature(name, value):
    return check_number(name, value, 0.0, low_open=True)


def check_alpha(name, value):
    return check_number(name, value, 0.0, 1.0)


@export("keras_regularize.models.Distiller")
class Distiller(keras.Model):
    """Trains a student to match frozen teachers and the labels with `fit()`.

    Each training step runs the student forward once, runs every teacher in
    inference mode (`training=False`: dropout off, batch-norm statistics
    frozen) and minimises

    `loss = alpha * distillation_loss + (1 - alpha) * student_loss`

    plus the student's regularization losses, where `distillation_loss` is
    `T^2 * KL(p_teacher || softmax(student / T))` averaged over the batch,
    `p_teacher` is the mean of the teachers' `softmax(teacher / T)` (one
    teacher or an ensemble), and `student_loss` is the hard-label loss given
    to `compile` (by default cross-entropy on the student's logits, integer or
    one-hot labels). `sample_weight` and `class_weight` weight both terms.
    `fit` logs `loss`, `student_loss`, `distillation_loss` and the compiled
    metrics on the student's outputs; `evaluate` reports the student's own
    loss and metrics (no teacher call); `predict` and `distiller(x)` return
    the student's outputs.

    Teachers are set to `trainable=False` (this changes the models passed
    in), are never updated and get no optimizer state. `temperature` and
    `alpha` live in non-trainable variables, so a callback may assign them
    (`distiller.alpha = 0.5`) inside compiled training steps.

    Teacher cache: with `cache_teacher_outputs=True`, each `fit` call first
    runs the teachers once over `x` (which must be in-memory arrays) and then
    feeds their logits to the training steps as extra input columns, so later
    epochs cost about a student-only epoch. The cached logits travel as rows
    of the same arrays as the inputs, so shuffling and `validation_split`
    keep them paired; datasets and generators (which may shuffle or augment
    on their own) are refused with an error, so a stale cache cannot be used.
    Augmentation layers inside the student see the same inputs as without
    the cache: the teachers always see the raw `x`.

    `student` and `teacher` are keyword-only: `keras.distillation.Distiller`
    takes `(teacher, student)` where keras_regularize 0.1.0 took `(student,
    teacher)`, so a positional call raises a `TypeError` rather than risk
    training the teacher.

    Args:
        student: A `keras.Model` producing logits (or probabilities, see
            `from_logits`). It is the model being trained.
        teacher: A trained `keras.Model`, or a list of them (an ensemble).
            Each teacher's output shape must equal the student's.
        temperature: Float > 0. Softmax temperature `T`. Defaults to `4.0`.
        alpha: Float in `[0, 1]`. Weight of the distillation term; the
            hard-label term gets `1 - alpha`. Defaults to `0.7`.
        from_logits: Bool. Whether student and teachers output logits.
            Defaults to `True`.
        cache_teacher_outputs: Bool. Whether `fit` computes the teachers'
            outputs once per call and reuses them every epoch. Defaults to
            `False`.
        **kwargs: Base model arguments (`name`, ...).

    Example:

    >>> x = np.random.rand(64, 8).astype("float32")
    >>> y = np.random.randint(0, 3, size=(64,))
    >>> teacher = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(32, activation="relu"),
    ...     keras.layers.Dense(3),
    ... ])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    >>> distiller = keras_regularize.models.Distiller(
    ...     student=student, teacher=teacher, temperature=4.0, alpha=0.7)
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"])
    >>> history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    >>> sorted(history.history)  # both terms of the loss are logged
    ['accuracy', 'distillation_loss', 'loss', 'student_loss']
    >>> distiller.predict(x[:2], verbose=0).shape  # the student's logits
    (2, 3)

    Passing the two models by position is refused, whatever the order:

    >>> Distiller = keras_regularize.models.Distiller
    >>> Distiller(student, teacher)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: Distiller takes `student` and `teacher` as keyword arguments...

    References:
        - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
        - [Furlanello et al., 2018](https://arxiv.org/abs/1805.04770)
    """

    def __new__(cls, *args, **kwargs):
        # Runs before `__init__`, so a positional call gets this message
        # rather than Python's "takes 1 positional argument".
        if args:
            _refuse_positional(cls, args)
        return super().__new__(cls, **kwargs)

    def __init__(
        self,
        *,
        student,
        teacher,
        temperature=4.0,
        alpha=0.7,
        from_logits=True,
        cache_teacher_outputs=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(student, keras.Model):
            fail("student", "a keras.Model", type(student).__name__)
        teachers = (
            list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        )
        if not teachers:
            fail("teacher", "a keras.Model or a non-empty list", teacher)
        for i, t in enumerate(teachers):
            if not isinstance(t, keras.Model):
                fail(f"teacher[{i}]", "a keras.Model", type(t).__name__)
            if t is student:
                fail(
                    "teacher",
                    "a model other than the student (to distill a model "
                    "into a fresh copy of itself use "
                    "`Distiller.self_distill(model)`)",
                    f"the student model '{student.name}'",
                )
        checked = self._check_shapes(student, teachers)
        check_temperature("temperature", temperature)
        check_alpha("alpha", alpha)
        from_logits = check_bool("from_logits", from_logits)
        cache_teacher_outputs = check_bool(
            "cache_teacher_outputs", cache_teacher_outputs
        )

        self.student = student
        self.teachers = teachers
        for t in teachers:
            t.trainable = False
        self.from_logits = from_logits
        self.cache_teacher_outputs = cache_teacher_outputs
        self.temperature = temperature
        self.alpha = alpha
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self._evaluating = False
        # Whether every teacher's output shape is known to equal the
        # student's; if not (unbuilt models), the first call checks.
        self._shapes_checked = checked
        if student.built and all(t.built for t in teachers):
            self.built = True

    @staticmethod
    def _check_shapes(student, teachers, student_shape=None, shapes=None):
        """Checks known output shapes; returns whether all were known."""
        if shapes is None:
            shapes = [_output_shape(t) for t in teachers]
        if student_shape is None:
            student_shape = _output_shape(student)
        known = [(i, s) for i, s in enumerate(shapes) if s is not None]
        for (i, a), (j, b) in zip(known, known[1:]):
            if a != b:
                fail(
                    "teacher",
                    "an ensemble whose teachers share one output shape",
                    f"teacher[{i}] with output shape {(None,) + a} and "
                    f"teacher[{j}] with output shape {(None,) + b}",
                )
        if student_shape is not None:
            for i, shape in known:
                if shape != student_shape:
                    fail(
                        "teacher",
                        "teacher outputs of the student's output shape "
                        f"{(None,) + student_shape}",
                        f"teacher[{i}] with output shape {(None,) + shape}",
                    )
        return student_shape is not None and len(known) == len(shapes)

    def _check_teachers_on(self, inputs, student_outputs):
        # The first call (the symbolic build that `fit`, `evaluate` and
        # `predict` run first, or a direct call) builds unbuilt teachers
        # and compares every teacher's output shape with the student's.
        # Building them here, outside any compiled step, is what lets JAX
        # train with teachers that were never called before.
        shapes = []
        for t in self.teachers:
            shape = _output_shape(t) if t.built else None
            if shape is None:
                shape = tuple(t(inputs, training=False).shape[1:])
            shapes.append(shape)
        self._check_shapes(
            self.student,
            self.teachers,
            student_shape=tuple(student_outputs.shape[1:]),
            shapes=shapes,
        )
        self._shapes_checked = True

    @property
    def teacher(self):
        """The teacher model, or the list of teachers of an ensemble."""
        return self.teachers[0] if len(self.teachers) == 1 else self.teachers

    temperature = ScalarVariable(
        check_temperature, "The current temperature, as a Python float."
    )
    alpha = ScalarVariable(
        check_alpha,
        "The current weight of the distillation term, as a Python float.",
    )

    @classmethod
    def self_distill(cls, model, **kwargs):
        """Distills a trained model into a fresh copy of its architecture.

        The student is `keras.models.clone_model(model)`: same layers, newly
        initialized weights. `model` becomes the (frozen) teacher. Compile
        and `fit` the returned Distiller, then keep `distiller.student`.

        Args:
            model: A trained functional or sequential `keras.Model`.
            **kwargs: Other `Distiller` arguments (`temperature`, `alpha`,
                `from_logits`, `cache_teacher_outputs`, `name`).

        Returns:
            A `Distiller` with the fresh copy as student.
        """
        student = keras.models.clone_model(model)
        # A clone copies `trainable` flags: a model that was itself a
        # teacher before (frozen by a Distiller) would give a student with
        # nothing to train.
        student.trainable = True
        return cls(student=student, teacher=model, **kwargs)

    def call(self, inputs, training=False):
        if isinstance(inputs, dict) and _CACHED in inputs:
            inputs = inputs[_INPUTS]
        outputs = self.student(inputs, training=training)
        if not self._shapes_checked:
            self._check_teachers_on(inputs, outputs)
        return outputs

    def prepare_train_batch(self, x, y=None, sample_weight=None):
        """The batch with the teachers' outputs as its cached column.

        For trainers that evaluate the loss more than once per step
        (`SharpnessAwareMinimization`): the teachers run here, once, and
        `compute_loss` reads their outputs from the returned inputs.
        """
        if isinstance(x, dict) and _CACHED in x:
            return x, y, sample_weight
        cached = ops.stack(self._teacher_outputs(x), axis=1)
        return {_INPUTS: x, _CACHED: cached}, y, sample_weight

    def _teacher_outputs(self, x):
        if isinstance(x, dict) and _CACHED in x:
            cached = ops.convert_to_tensor(x[_CACHED])
            return [cached[:, i] for i in range(len(self.teachers))]
        return [ops.stop_gradient(t(x, training=False)) for t in self.teachers]

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        batch = ops.shape(y_pred)[0]
        # Under tf.distribute, Keras's trainer wants the loss divided by the
        # replica count (and its compiled loss comes divided already); the
        # terms are combined undivided and the total divided once.
        replicas = replicas_in_sync()
        extra = 0.0
        for value in self.losses:
            extra = extra + ops.sum(ops.cast(value, "float32"))
        if self.loss is None:
            values = cross_entropy_per_sample(
                y_pred, y, self.from_logits, name="y"
            )
            hard = weighted_mean(values, sample_weight)
        else:
            # The compiled loss plus regularization, through the public
            # `compute_loss` (which also builds the compiled loss once).
            base = super().compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=training,
            )
            hard = ops.cast(base, "float32") * replicas - extra
        self.student_loss_tracker.update_state(hard, sample_weight=batch)
        if not training:
            return (hard + extra) / replicas
        temperature = ops.convert_to_tensor(self.temperature_variable)
        alpha = ops.convert_to_tensor(self.alpha_variable)
        # Nothing is broadcast: every teacher output (computed or cached)
        # must have the student's shape, checked when the step is traced.
        y_pred, teacher_outputs = check_outputs(
            y_pred, self._teacher_outputs(x), "student output", "teacher output"
        )
        targets = soft_targets(teacher_outputs, temperature, self.from_logits)
        soft = weighted_mean(
            kl_per_sample(y_pred, targets, temperature, self.from_logits),
            sample_weight,
        )
        self.distillation_loss_tracker.update_state(soft, sample_weight=batch)
        return (alpha * soft + (1.0 - alpha) * hard + extra) / replicas

    def get_metrics_result(self):
        logs = super().get_metrics_result()
        if self._evaluating:
            logs.pop("distillation_loss", None)
        return logs

    def evaluate(self, *args, **kwargs):
        previous, self._evaluating = self._evaluating, True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = previous

    def fit(self, x=None, y=None, *args, **kwargs):
        if not self.compiled:
            raise ValueError(
                "Distiller.fit() was called before compile(). Call "
                "`distiller.compile(optimizer=..., loss=..., metrics=...)` "
                "first (the loss is the student's hard-label loss)."
            )
        if self.cache_teacher_outputs:
            batch_size = args[0] if args else kwargs.get("batch_size")
            x = self._with_teacher_cache(x, batch_size)
        return super().fit(x, y, *args, **kwargs)

    def _with_teacher_cache(self, x, batch_size):
        if not _is_in_memory(x):
            fail(
                "x",
                "in-memory arrays when `cache_teacher_outputs=True` (a "
                "dataset or generator may shuffle or augment batches, so "
                "cached teacher outputs could not be matched to them; use "
                "`cache_teacher_outputs=False` for such inputs)",
                type(x).__name__,
            )
        outputs = [
            np.asarray(
                t.predict(x, batch_size=batch_size or 256, verbose=0),
                dtype="float32",
            )
            for t in self.teachers
        ]
        return {_INPUTS: x, _CACHED: np.stack(outputs, axis=1)}

    def get_config(self):
        teachers = [
            keras.saving.serialize_keras_object(t) for t in self.teachers
        ]
        return {
            "name": self.name,
            "trainable": self.trainable,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": teachers[0] if len(teachers) == 1 else teachers,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "from_logits": self.from_logits,
            "cache_teacher_outputs": self.cache_teacher_outputs,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"]
        )
        teacher = config["teacher"]
        if isinstance(teacher, list):
            config["teacher"] = [
                keras.saving.deserialize_keras_object(t) for t in teacher
            ]
        else:
            config["teacher"] = keras.saving.deserialize_keras_object(teacher)
        return cls(**config)
