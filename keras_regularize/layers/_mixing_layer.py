"""The call contract every mixing layer shares: `BaseMixing`."""

import functools

import keras

from keras_regularize import _backend
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import check_rate
from keras_regularize._validation import fail_shape
from keras_regularize._variables import ScalarVariable
from keras_regularize._variables import read_scalar
from keras_regularize.layers._mixing_math import MODES
from keras_regularize.layers._mixing_math import mix_batch
from keras_regularize.layers._mixing_math import mix_labels
from keras_regularize.layers._mixing_math import prepare_labels
from keras_regularize.layers._mixing_ops import KerasOps
from keras_regularize.layers._mixing_ops import TFDataState
from keras_regularize.layers._seeded import add_seed_generator


def check_alpha(name, value):
    """A Beta parameter: a finite number > 0."""
    return check_number(name, value, 0.0, low_open=True)


def check_probability(name, value):
    """A probability: a finite number in `[0, 1]`."""
    return check_number(name, value, 0.0, 1.0)


class BaseMixing(keras.layers.Layer):
    """Shared call contract of `MixupLayer`, `CutMixLayer` and `RandomMix`.

    It checks the constructor arguments, splits `call(images, labels)` (or a
    tuple, list or dict) into images and labels, converts the labels
    (`prepare_labels`), mixes only when `training` and rebuilds the input's
    structure. A subclass implements `_mix(xp, images)`, which returns
    `(mixed, lam, partner)` (see `_mixing_math.mix_batch`), and may refuse
    images in `_check_images(images)`.

    Under the jax and torch backends, a `tf.data` pipeline hands the layer
    TensorFlow tensors; the same maths then runs on TensorFlow operations
    (`_mixing_ops.TFOps`), with the layer's own `TFDataState`: a
    `tf.random.Generator` seeded like the layer and TensorFlow copies of the
    hyperparameters, kept in step by the setters.
    """

    # The subclass's own hyperparameters (`ScalarVariable`s, set by its
    # constructor) and the `mix_batch` argument that each one feeds.
    MIX_SCALARS = {}

    def __init__(
        self,
        *,
        num_classes=None,
        label_smoothing=0.0,
        mode="batch",
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        # Images are cast to the compute dtype here and labels kept in
        # float32, so the base class must not autocast the whole structure.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        # Before the first hyperparameter is set: `_scalar_assigned` uses it.
        self._tf_data = TFDataState()
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1)
        self.num_classes = num_classes
        self.label_smoothing = check_rate("label_smoothing", label_smoothing)
        self.mode = check_choice("mode", mode, MODES)
        self.probability = probability
        add_seed_generator(self, seed)
        # Every variable exists now; nothing depends on the input shape.
        self.built = True

    probability = ScalarVariable(
        check_probability,
        "Chance that a batch (or a sample, or a pair) is mixed at all.",
    )

    def _scalar_assigned(self, name, value):
        # A tf.data graph under jax/torch reads TensorFlow copies.
        self._tf_data.assign(name, value)

    def _keras_ops(self):
        return KerasOps(
            self.seed_generator, functools.partial(read_scalar, self)
        )

    def _mix(self, xp, images):
        own = {a: xp.scalar(n) for n, a in self.MIX_SCALARS.items()}
        return mix_batch(
            xp,
            images,
            mode=self.mode,
            probability=xp.scalar("probability"),
            **own,
            **self._cut_arguments(images),
        )

    def _cut_arguments(self, images):
        """CutMix's box settings for `mix_batch`; none for MixUp."""
        return {}

    def _check_images(self, images):
        """Refuses images the subclass cannot mix (shapes are static)."""
        # A body besides the docstring: AutoGraph (tf.data) cannot convert
        # a function whose only statement is its docstring.
        return None

    def mix_images(self, images):
        """Mixes a batch of images on the active backend.

        This is the on-device half of the layer, used by
        `keras_regularize.models.MixingModel` inside `fit`.

        Args:
            images: Tensor `(batch, ...)`; cast to the layer's compute dtype.

        Returns:
            Tuple `(mixed, lam, partner)`: the mixed images, the float32
            weight `(batch,)` of each sample's own label, and the int32
            index `(batch,)` of its partner. Mixed targets are
            `lam * y + (1 - lam) * y[partner]`.
        """
        xp = self._keras_ops()
        images = xp.cast(xp.convert(images), self.compute_dtype)
        self._check_images(images)
        return self._mix(xp, images)

    def prepare_labels(self, labels, smoothing=None):
        """Checked, one-hot (for integer ids) and smoothed float32 targets.

        Args:
            labels: Integer class ids `(batch,)`/`(batch, 1)`, binary float
                targets `(batch,)`/`(batch, 1)` in `[0, 1]`, or float rows
                `(batch, ..., classes)`.
            smoothing: Optional float overriding `label_smoothing`.

        Returns:
            Float32 targets: one-hot rows for ids; binary targets keep
            their shape. Smoothing `e` gives `y * (1 - e) + e / classes`,
            with `classes = 2` for binary targets.
        """
        xp = self._keras_ops()
        if smoothing is None:
            smoothing = self.label_smoothing
        return prepare_labels(
            xp, xp.convert(labels), self.num_classes, smoothing
        )

    def __call__(self, *args, **kwargs):
        if _backend.is_foreign_tf_data((args, kwargs)):
            # A `tf.data` pipeline under the jax or torch backend: the same
            # maths on TensorFlow operations, outside Keras's call.
            xp = self._tf_data.ops(self.seed, functools.partial(getattr, self))
            return self._mix_structure(xp, *args, **kwargs)
        return super().__call__(*args, **kwargs)

    def call(self, inputs, labels=None, training=True):
        return self._mix_structure(
            self._keras_ops(), inputs, labels, training=training
        )

    def _split(self, inputs, labels):
        """Returns `(images, labels, rebuild)`; `rebuild` restores the form."""
        if labels is not None:
            return inputs, labels, lambda x, y: (x, y)
        if isinstance(inputs, dict):
            if "images" not in inputs or "labels" not in inputs:
                self._labels_needed(inputs)
            rest = {
                k: v for k, v in inputs.items() if k not in ("images", "labels")
            }
            return (
                inputs["images"],
                inputs["labels"],
                lambda x, y: {**rest, "images": x, "labels": y},
            )
        if isinstance(inputs, (tuple, list)):
            if len(inputs) != 2:
                self._labels_needed(inputs)
            kind = type(inputs) if isinstance(inputs, list) else tuple
            return inputs[0], inputs[1], lambda x, y: kind((x, y))
        self._labels_needed(inputs)

    def _labels_needed(self, inputs):
        name = type(self).__name__
        raise ValueError(
            f"{name} mixes images and labels together and needs both: call "
            f"it as `layer((images, labels))`, `layer(images, labels)` or "
            f"`layer({{'images': images, 'labels': labels}})`, e.g. in "
            f"`dataset.map(layer)`. To mix on device inside `fit`, wrap the "
            f"model instead: `keras_regularize.models.MixingModel(model, "
            f"{name}(...))`. Received: inputs={inputs!r}"
        )

    def _check_batch(self, images, labels):
        for name, value in (("inputs", images), ("labels", labels)):
            if len(value.shape) == 0:
                fail_shape(name, "a batch: a tensor of rank >= 1", value.shape)
        a, b = images.shape[0], labels.shape[0]
        if a is not None and b is not None and a != b:
            fail_shape(
                "labels",
                f"labels with the batch size of the images ({a})",
                labels.shape,
            )
        self._check_images(images)

    def _mix_structure(self, xp, inputs, labels=None, training=True):
        images, labels, rebuild = self._split(inputs, labels)
        images = xp.cast(xp.convert(images), self.compute_dtype)
        labels = xp.convert(labels)
        self._check_batch(images, labels)
        targets = prepare_labels(
            xp, labels, self.num_classes, self.label_smoothing
        )
        if not training:
            return rebuild(images, targets)
        mixed, lam, partner = self._mix(xp, images)
        return rebuild(mixed, mix_labels(xp, targets, lam, partner))

    def compute_output_spec(self, inputs, labels=None, training=True):
        images, labels, rebuild = self._split(inputs, labels)
        self._check_batch(images, labels)
        # The label rules on symbolic tensors: static checks and the shape.
        targets = prepare_labels(
            KerasOps(None), labels, self.num_classes, self.label_smoothing
        )
        return rebuild(
            keras.KerasTensor(images.shape, dtype=self.compute_dtype),
            keras.KerasTensor(tuple(targets.shape), dtype="float32"),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
            "mode": self.mode,
            "probability": self.probability,
            "seed": self.seed,
            **{name: getattr(self, name) for name in self.MIX_SCALARS},
        }
