"""A model wrapper that mixes each training batch on device inside `fit`."""

import keras
from keras import ops

from keras_regularize._export import export


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

    The mixer's `label_smoothing` is applied to float labels before the loss;
    integer labels reach the loss unchanged when it is `0`, and as smoothed
    one-hot rows (which need `num_classes` and a categorical loss) otherwise.

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
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected "
                    f"{expected}. Received: {name}={value!r}"
                )
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
        if not training or pending is None:
            return super().compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
        lam, partner = pending
        y = self._loss_labels(y)
        y_partner = keras.tree.map_structure(
            lambda t: ops.take(t, partner, axis=0), y
        )
        weight = lam if sample_weight is None else lam * sample_weight
        weight_partner = (
            1.0 - lam if sample_weight is None else (1.0 - lam) * sample_weight
        )
        own = super().compute_loss(x, y, y_pred, weight, training=training)
        other = super().compute_loss(
            x, y_partner, y_pred, weight_partner, training=training
        )
        # Both calls added the regularization losses; keep them once.
        extra = [ops.sum(ops.cast(v, own.dtype)) for v in self.losses]
        if extra:
            other = other - ops.sum(ops.stack(extra))
        return own + other

    def _loss_labels(self, y):
        mixer = self.mixer

        def convert(t):
            dtype = keras.backend.standardize_dtype(t.dtype)
            integer = "int" in dtype or dtype == "bool"
            if integer and not mixer.label_smoothing:
                return t
            return mixer.prepare_labels(t)

        return keras.tree.map_structure(convert, y)

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
