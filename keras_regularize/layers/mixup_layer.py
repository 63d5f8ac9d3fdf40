"""MixUp that mixes images and labels with one lambda and one partner."""

from keras_regularize._export import export
from keras_regularize._variables import ScalarVariable
from keras_regularize.layers._mixing_layer import BaseMixing
from keras_regularize.layers._mixing_layer import check_alpha


@export("keras_regularize.layers.MixupLayer")
class MixupLayer(BaseMixing):
    """Blends pairs of samples and their labels (mixup).

    During training each sample `i` is paired with a partner `j` and
    replaced by `lam * x_i + (1 - lam) * x_j`,
    with `lam ~ Beta(alpha, alpha)`; its label becomes
    `lam * y_i + (1 - lam) * y_j` with the same `lam` and partner, after
    label smoothing. Returned labels are float32 soft targets `(batch,
    classes)`; images come back in the layer's compute dtype.

    Partners: in `"batch"` and `"elem"` modes they follow one random cycle
    through the batch, so no sample of a batch of two or more is paired with
    itself (a plain permutation leaves about one per batch unmixed). In
    `"pair"` mode samples are matched in pairs and, in an odd batch, one
    sample is left alone (unmixed) by design. A batch of one is returned
    unmixed; an empty batch comes back empty.

    Labels: integer class ids `(batch,)`/`(batch, 1)` need `num_classes`
    and must lie in `[0, num_classes)`. Float targets `(batch,)` or
    `(batch, 1)` are binary targets in `[0, 1]` (refused when
    `num_classes > 2`: float class ids are not mixed as numbers). Float
    targets `(batch, classes)` are soft or multi-hot rows. A bad label
    value raises `ValueError` naming it in eager calls; in a TensorFlow
    graph (`tf.data`, `tf.function`) TensorFlow raises
    `InvalidArgumentError` with the same message; inside a compiled JAX or
    XLA step, where nothing can raise on data, the bad rows become NaN.

    Integer images (e.g. `uint8`) are cast to the compute dtype with their
    values kept (no rescaling), so the mixed images are floats.

    With `training=False` the images are returned untouched and the labels
    are converted exactly as in training, minus the mixing: integer ids
    become one-hot rows and `label_smoothing` is applied, so training and
    validation losses are computed on the same kind of targets.

    The layer needs labels: use it in a data pipeline
    (`dataset.map(layer)`, with any Keras backend) or on arrays. To mix on
    device inside `fit`, wrap the model in
    `keras_regularize.models.MixingModel(model, MixupLayer(...))` instead.

    Lambda is drawn with a fixed-round Marsaglia-Tsang Gamma sampler built
    from seeded uniform and normal draws, so it also compiles under
    TensorFlow XLA. `alpha` and `probability` live in non-trainable
    variables: a callback may set `layer.alpha = 0.4` or
    `layer.probability = 0.0` (to stop mixing) during training. The new
    value reaches the next batches on every backend, in `fit` and in a
    running `tf.data` pipeline alike; batches the pipeline has already
    prepared (prefetched) were mixed with the old value.

    Args:
        alpha: Float > 0, the Beta distribution's parameter. Defaults to
            `0.2`.
        num_classes: Int, needed when labels are integer class ids.
            Defaults to `None`.
        label_smoothing: Float in `[0, 1)`. Targets become
            `y * (1 - label_smoothing) + label_smoothing / classes` before
            mixing, with `classes = 2` for binary targets `(batch,)`/
            `(batch, 1)` and the number of columns otherwise (multi-hot
            rows are smoothed column by column with the same map).
            Defaults to `0.0`.
        mode: `"batch"` (one lambda per batch), `"pair"` (samples matched in
            pairs, one lambda per pair) or `"elem"` (one lambda per sample).
            Defaults to `"batch"`.
        probability: Float in `[0, 1]`, chance that the batch (a pair, a
            sample in `"elem"` mode) is mixed at all. Unmixed samples keep
            their own (smoothed) labels. Defaults to `1.0`.
        seed: Optional non-negative int seeding the layer's
            `keras.random.SeedGenerator`. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tuple `(images, labels)`, a list `[images, labels]` or a
            dict with keys `"images"` and `"labels"` (other keys pass
            through); or the images, with the labels as second argument.
            Labels are integer ids `(batch,)`/`(batch, 1)` or float targets
            `(batch, classes)`. The same structure is returned.
        labels: Optional labels when `inputs` are the images.
        training: Python bool. Mixing happens only when `True` (the default,
            as for augmentation layers in a data pipeline).

    Example:

    >>> mixup = keras_regularize.layers.MixupLayer(
    ...     alpha=0.2, num_classes=3, seed=0)
    >>> images = np.random.default_rng(0).random((4, 8, 8, 3), "float32")
    >>> labels = np.array([0, 1, 2, 0])
    >>> mixed, targets = mixup((images, labels))
    >>> tuple(mixed.shape), tuple(targets.shape)  # soft targets, 3 classes
    ((4, 8, 8, 3), (4, 3))

    In a pipeline: `dataset.batch(32).map(mixup)`. A callback may stop
    mixing for the last epochs; labels then come back one-hot:

    >>> mixup.probability = 0.0
    >>> _, targets = mixup((images, labels))
    >>> keras.ops.convert_to_numpy(targets)
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.],
           [1., 0., 0.]], dtype=float32)

    References:
        - [Zhang et al., 2018](https://arxiv.org/abs/1710.09412)
    """

    MIX_SCALARS = {"alpha": "mixup_alpha"}

    def __init__(self, alpha=0.2, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha

    alpha = ScalarVariable(check_alpha, "The Beta(alpha, alpha) parameter.")
