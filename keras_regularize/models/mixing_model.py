"""A model wrapper that mixes each training batch on device inside `fit`."""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import fail
from keras_regularize._value_checks import require


class _PendingMix:
    """Carries one step's `(lam, partner)` from `call` to `compute_loss`.

    A plain object, so Keras's attribute tracking leaves it alone. Both
    methods run inside the same traced training step on every backend.
    """

    def __init__(self):
        self.value = None


@export("keras_regularize.models.MixingModel")
class MixingModel(keras.Model):
    """Trains `model` on batches mixed on device by a mixing layer.

    During `fit`, each batch of inputs is mixed by `mixer`
    (`keras_regularize.layers.MixupLayer`, `CutMixLayer` or `RandomMix`)
    inside the compiled training step, and the loss of every sample is

        lam * loss(y_i, y_pred) + (1 - lam) * loss(y_j, y_pred)

    with the same `lam` and partner `j` as its inputs. For cross-entropy
    this equals the loss on the mixed soft targets, so integer labels work
    with `SparseCategoricalCrossentropy` and need no `num_classes`; one-hot
    labels work with `CategoricalCrossentropy`. The two terms are passed to
    the compiled loss as sample weights (times any `sample_weight` given), so
    losses with the default `"sum_over_batch_size"` or `"sum"` reduction get
    exactly the formula above; regularization losses are counted once.
    Metrics compare the predictions on mixed inputs with the unmixed labels.

    `sample_weight` may be `(batch,)` or `(batch, 1)`; `lam` is broadcast
    along the batch axis only, so with `probability=0` the loss equals the
    wrapped model's.

    Targets reach the loss the same way in `fit`, `evaluate` and validation:

    - Integer labels with a sparse loss (its name contains "sparse", e.g.
      `SparseCategoricalCrossentropy`) pass unchanged and need no
      `num_classes`; ids outside `[0, outputs)` raise `ValueError` (in a
      TensorFlow graph, TensorFlow's `InvalidArgumentError` with the same
      message), and give a NaN loss inside a compiled JAX or XLA step.
      `label_smoothing > 0` is refused there: smoothed targets are one-hot
      rows, so use a categorical loss.
    - Integer labels with any other loss become one-hot rows (smoothed by
      the mixer's `label_smoothing`) when the mixer has `num_classes`; they
      must match the model's number of outputs. Without `num_classes` they
      pass unchanged (and `label_smoothing > 0` needs `num_classes`).
    - Integer 0/1 labels of a one-unit output, and float labels, pass
      unchanged when `label_smoothing` is `0` (the two-term loss holds for
      any target, regression included), and otherwise follow the mixing
      layers' label rules: binary targets `(batch,)`/`(batch, 1)` in
      `[0, 1]` are smoothed as two classes, rows `(batch, classes)` over
      their columns.

    Metrics see the same targets without label smoothing.

    `evaluate`, `predict` and `model(x)` call the wrapped model without
    mixing. The wrapper saves and loads as a `.keras` file; `wrapper.model`
    is an ordinary Keras model that can be saved and used on its own.

    Args:
        model: The Keras model to train; takes a single input tensor.
        mixer: A mixing layer from `keras_regularize.layers`.
        **kwargs: Base model arguments (`name`, ...).

    Example:

    >>> inner = keras.Sequential(
    ...     [keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...      keras.layers.Dense(3)])
    >>> model = keras_regularize.models.MixingModel(
    ...     inner, keras_regularize.layers.MixupLayer(alpha=0.4, seed=0))
    >>> model.compile(
    ...     optimizer="sgd",
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x = np.random.default_rng(0).random((8, 8, 8, 1)).astype("float32")
    >>> history = model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    >>> model.predict(x, verbose=0).shape
    (8, 3)

    References:
        - [Zhang et al., 2018](https://arxiv.org/abs/1710.09412)
        - [Yun et al., 2019](https://arxiv.org/abs/1905.04899)
    """

    def __init__(self, model, mixer, **kwargs):
        super().__init__(**kwargs)
        for name, value, kind in (
            ("model", model, keras.Model),
            ("mixer", mixer, keras.layers.Layer),
        ):
            if not isinstance(value, kind) or (
                name == "mixer" and not hasattr(value, "mix_images")
            ):
                expected = (
                    "a Keras model"
                    if name == "model"
                    else "a mixing layer from keras_regularize.layers"
                )
                fail(name, expected, value)
        self.model = model
        self.mixer = mixer
        self._pending = _PendingMix()
        if model.built:
            self.built = True

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if training:
            inputs, lam, partner = self.mixer.mix_images(inputs)
            self._pending.value = (lam, partner)
        return self.model(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        pending, self._pending.value = self._pending.value, None
        y, valid = self._targets(y, y_pred, smoothing=True)
        if not training or pending is None:
            loss = super().compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
            return _poison(loss, valid)
        lam, partner = pending
        y_partner = keras.tree.map_structure(
            lambda t: ops.take(t, partner, axis=0), y
        )
        weight = _weigh(lam, sample_weight)
        weight_partner = _weigh(1.0 - lam, sample_weight)
        own = super().compute_loss(x, y, y_pred, weight, training=training)
        other = super().compute_loss(
            x, y_partner, y_pred, weight_partner, training=training
        )
        # Both calls added the regularization losses; keep them once.
        extra = [ops.sum(ops.cast(v, own.dtype)) for v in self.losses]
        if extra:
            other = other - ops.sum(ops.stack(extra))
        return _poison(own + other, valid)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Metrics see the targets the loss sees, without label smoothing
        # (a smoothed binary target would never equal a rounded prediction).
        y, _ = self._targets(y, y_pred, smoothing=False)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _targets(self, y, y_pred, smoothing):
        """The labels as the compiled loss needs them, and a validity flag.

        Returns `(y, valid)`: `valid` is `None`, or a scalar bool tensor that
        is False when traced class ids were out of range (the loss is then
        made NaN, since a compiled step cannot raise on data).
        """
        if y is None:
            return y, None
        flat_y = keras.tree.flatten(y)
        flat_pred = keras.tree.flatten(y_pred)
        if len(flat_pred) != len(flat_y):
            flat_pred = flat_pred[:1] * len(flat_y)
        flat_loss = _losses_for(self.loss, y, len(flat_y))
        flags = []
        converted = []
        for t, pred, loss in zip(flat_y, flat_pred, flat_loss):
            t, flag = self._target(t, pred, loss, smoothing)
            converted.append(t)
            if flag is not None:
                flags.append(flag)
        y = keras.tree.pack_sequence_as(y, converted)
        valid = None
        for flag in flags:
            valid = flag if valid is None else ops.logical_and(valid, flag)
        return y, valid

    def _target(self, t, pred, loss, smoothing):
        mixer = self.mixer
        smoothing = mixer.label_smoothing if smoothing else 0.0
        if not isinstance(t, keras.KerasTensor):
            t = ops.convert_to_tensor(t)
        dtype = keras.backend.standardize_dtype(t.dtype)
        integer = "int" in dtype or dtype == "bool"
        units = pred.shape[-1] if len(pred.shape) >= 2 else 1
        if not integer:
            # Any float target works with the two-term loss (regression
            # included); smoothing needs the mixing layers' label rules.
            if not smoothing:
                return t, None
            return mixer.prepare_labels(t, smoothing=smoothing), None
        if units == 1:
            # Integer 0/1 labels of a one-unit (binary) output.
            if not smoothing:
                return t, None
            return (
                mixer.prepare_labels(
                    ops.cast(t, "float32"), smoothing=smoothing
                ),
                None,
            )
        if smoothing and mixer.num_classes is None:
            mixer.prepare_labels(t)  # raises: `num_classes` is needed
        if _is_sparse(loss):
            if smoothing:
                fail(
                    "label_smoothing",
                    "0 with integer labels and a sparse loss: smoothed "
                    "targets are one-hot rows, so compile with a "
                    "categorical loss such as "
                    "keras.losses.CategoricalCrossentropy",
                    smoothing,
                )
            return _ids_in_range(t, units)
        if mixer.num_classes is None:
            return t, None
        if units is not None and units != mixer.num_classes:
            fail(
                "num_classes",
                f"the model's number of outputs ({units}) for one-hot targets",
                mixer.num_classes,
            )
        return mixer.prepare_labels(t, smoothing=smoothing), None

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "mixer": keras.saving.serialize_keras_object(self.mixer),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        mixer = keras.saving.deserialize_keras_object(config.pop("mixer"))
        return cls(model=model, mixer=mixer, **config)


def _weigh(lam, sample_weight):
    """`lam * sample_weight`, with `lam (B,)` broadcast along the batch."""
    if sample_weight is None:
        return lam

    def times(w):
        w = ops.convert_to_tensor(w)
        rank = len(w.shape)
        return ops.reshape(lam, (-1,) + (1,) * max(rank - 1, 0)) * ops.cast(
            w, lam.dtype
        )

    return keras.tree.map_structure(times, sample_weight)


def _poison(loss, valid):
    """NaN instead of a finite wrong loss when traced ids were invalid."""
    if valid is None:
        return loss
    return loss + ops.where(valid, 0.0, float("nan"))


def _ids_in_range(ids, classes):
    """Checks class ids for a sparse loss: `(ids, valid)`.

    Eager ids raise `ValueError` at once; in TensorFlow graphs the returned
    ids wait for an assertion. `valid` is a scalar bool that `_poison`
    turns into a NaN loss where nothing could raise (compiled steps).
    """
    if classes is None:
        return ids, None
    checked = ops.cast(ids, "int32")
    valid = ops.logical_and(checked >= 0, checked < classes)
    ids = require(
        valid,
        checked,
        "labels",
        f"integer class ids in [0, {classes})",
        guard=ids,
    )
    return ids, ops.all(valid)


def _losses_for(loss, y, count):
    """One compiled loss per flattened target (best effort for structures)."""
    if isinstance(loss, dict) and isinstance(y, dict):
        return [loss.get(key) for key in sorted(y)]
    if isinstance(loss, (list, tuple)):
        if len(loss) == count:
            return list(loss)
        return [loss[0] if loss else None] * count
    return [loss] * count


def _is_sparse(loss):
    """Whether a compiled loss takes integer class ids (by its name)."""
    if loss is None:
        return False
    if isinstance(loss, str):
        return "sparse" in loss.lower()
    names = [type(loss).__name__, getattr(loss, "__name__", "")]
    fn = getattr(loss, "fn", None)  # keras.losses.LossFunctionWrapper
    if fn is not None:
        names.append(getattr(fn, "__name__", ""))
    return any("sparse" in name.lower() for name in names)
