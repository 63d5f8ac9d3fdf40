"""CutMix whose label weight is exactly the pasted fraction of the input."""

from keras_regularize._export import export
from keras_regularize._variables import ScalarVariable
from keras_regularize.layers._mixing_cut import BaseCutMixing
from keras_regularize.layers._mixing_layer import check_alpha


@export("keras_regularize.layers.CutMixLayer")
class CutMixLayer(BaseCutMixing):
    """Pastes a box from a partner sample, and mixes the labels to match.

    During training each sample `i` gets a partner `j` (never itself in a
    batch of two or more, except in `"pair"` mode's odd one out; see
    `MixupLayer`) and a box of `x_j` is pasted into `x_i`. Rank-3 inputs
    `(batch, steps, channels)` get a segment of steps, rank-4 images a
    rectangle, rank-5 volumes a cuboid. Following the CutMix paper, with
    `lam ~ Beta(alpha, alpha)` each side of the box is
    `(1 - lam) ** (1 / spatial_rank)` of the input's extent, its centre is
    uniform over the input, and it is clipped at the borders. The label
    becomes `lam * y_i + (1 - lam) * y_j` with the same partner, after label
    smoothing; with `correct_lam=True` (the default) `1 - lam` is exactly the
    fraction of elements that came from the partner.

    With `training=False` the images are returned untouched and the labels
    are converted exactly as in training, minus the mixing (one-hot for
    integer ids, then label smoothing). Labels, label smoothing and integer
    images follow the rules of `MixupLayer`; integer images stay whole
    numbers, since pasting copies values. `alpha` and `probability` live in
    non-trainable variables, so callbacks may change them during training,
    in `fit` or in a running `tf.data` pipeline (batches already prefetched
    keep the old value).
    To mix on device inside `fit`, wrap the model in
    `keras_regularize.models.MixingModel(model, CutMixLayer(...))`.

    Args:
        alpha: Float > 0, the Beta distribution's parameter. Defaults to
            `1.0` (lambda uniform, as in the paper).
        num_classes: Int, needed when labels are integer class ids.
            Defaults to `None`.
        label_smoothing: Float in `[0, 1)`, applied before mixing (two
            classes for binary targets; see `MixupLayer`). Defaults to
            `0.0`.
        mode: `"batch"` (one box and lambda per batch), `"pair"` (one per
            pair of samples) or `"elem"` (one per sample). Defaults to
            `"batch"`.
        probability: Float in `[0, 1]`, chance that the batch (a pair, a
            sample) is mixed at all. Defaults to `1.0`.
        correct_lam: Bool. Whether the label weight is recomputed from the
            clipped box, so it equals the pasted fraction. Defaults to
            `True`.
        minmax: Optional `(lo, hi)` with `0 < lo < hi <= 1`: each side ratio
            of the box is drawn uniformly from `[lo, hi)` instead of from
            lambda, and the box lies inside the input; the label weight is
            then always the pasted fraction. Defaults to `None`.
        data_format: `"channels_last"`, `"channels_first"` or `None`
            (`keras.config.image_data_format()`). Defaults to `None`.
        seed: Optional non-negative int seeding the layer's
            `keras.random.SeedGenerator`. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tuple `(images, labels)`, a list, or a dict with keys
            `"images"` and `"labels"`; or the images with the labels as
            second argument. Images have rank 3, 4 or 5. Labels are integer
            ids `(batch,)`/`(batch, 1)` or float targets `(batch, classes)`.
            The same structure is returned.
        labels: Optional labels when `inputs` are the images.
        training: Python bool. Mixing happens only when `True` (default).

    Example:

    With `minmax=(0.75, 1.0)` every side of the box is 3 of 4 pixels, so
    9/16 of each image comes from its partner, and the labels say so:

    >>> cutmix = keras_regularize.layers.CutMixLayer(
    ...     num_classes=2, minmax=(0.75, 1.0), seed=0)
    >>> black, white = np.zeros((4, 4, 1)), np.ones((4, 4, 1))
    >>> images = np.stack([black, white]).astype("float32")
    >>> mixed, targets = cutmix((images, np.array([0, 1])))
    >>> keras.ops.convert_to_numpy(targets)
    array([[0.4375, 0.5625],
           [0.5625, 0.4375]], dtype=float32)
    >>> keras.ops.convert_to_numpy(mixed).mean(axis=(1, 2, 3))  # white share
    array([0.5625, 0.4375], dtype=float32)

    References:
        - [Yun et al., 2019](https://arxiv.org/abs/1905.04899)
    """

    MIX_SCALARS = {"alpha": "cutmix_alpha"}

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha

    alpha = ScalarVariable(check_alpha, "The Beta(alpha, alpha) parameter.")
