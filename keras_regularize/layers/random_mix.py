"""MixUp or CutMix, chosen at random for each batch, pair or sample."""

from keras_regularize._export import export
from keras_regularize._variables import ScalarVariable
from keras_regularize.layers._mixing_cut import BaseCutMixing
from keras_regularize.layers._mixing_layer import check_alpha
from keras_regularize.layers._mixing_layer import check_probability


@export("keras_regularize.layers.RandomMix")
class RandomMix(BaseCutMixing):
    """Applies CutMix with probability `switch_prob`, otherwise MixUp.

    The choice is made once per batch (`mode="batch"`), per pair of samples
    (`"pair"`) or per sample (`"elem"`), like timm's `Mixup` with both alphas
    set, but for any batch size (odd ones and a batch of 1 included) and on
    every Keras backend. MixUp blends the partner in with
    `lam ~ Beta(mixup_alpha, mixup_alpha)`; CutMix pastes a box drawn from
    `lam ~ Beta(cutmix_alpha, cutmix_alpha)` exactly as `CutMixLayer` does.
    Labels are mixed with the same lambda and partner as the images, after
    label smoothing. Partners, labels and integer images follow the rules
    of `MixupLayer`.

    With `training=False` the images are returned untouched and the labels
    are converted exactly as in training, minus the mixing. `mixup_alpha`,
    `cutmix_alpha`, `switch_prob` and `probability` live in non-trainable
    variables, so callbacks may change them during training, in `fit` or in
    a running `tf.data` pipeline (batches already prefetched keep the old
    values). To mix on device inside `fit`, wrap the model in
    `keras_regularize.models.MixingModel(model, RandomMix(...))`.

    Args:
        mixup_alpha: Float > 0, MixUp's Beta parameter. Defaults to `0.8`.
        cutmix_alpha: Float > 0, CutMix's Beta parameter. Defaults to `1.0`.
        switch_prob: Float in `[0, 1]`, chance of CutMix rather than MixUp.
            Defaults to `0.5`.
        num_classes: Int, needed when labels are integer class ids.
            Defaults to `None`.
        label_smoothing: Float in `[0, 1)`, applied before mixing (two
            classes for binary targets; see `MixupLayer`). Defaults to
            `0.0`.
        mode: `"batch"`, `"pair"` or `"elem"`: what shares one choice, one
            lambda and one box. Defaults to `"batch"`.
        probability: Float in `[0, 1]`, chance that the batch (a pair, a
            sample) is mixed at all. Defaults to `1.0`.
        correct_lam: Bool. Whether CutMix's label weight is recomputed from
            the clipped box. Defaults to `True`.
        minmax: Optional `(lo, hi)` with `0 < lo < hi <= 1`, CutMix side
            ratios drawn from `[lo, hi)`; see `CutMixLayer`. Defaults to
            `None`.
        data_format: `"channels_last"`, `"channels_first"` or `None`
            (`keras.config.image_data_format()`). Defaults to `None`.
        seed: Optional non-negative int seeding the layer's
            `keras.random.SeedGenerator`. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tuple `(images, labels)`, a list, or a dict with keys
            `"images"` and `"labels"`; or the images with the labels as
            second argument. Images have rank 3, 4 or 5. The same structure
            is returned.
        labels: Optional labels when `inputs` are the images.
        training: Python bool. Mixing happens only when `True` (default).

    Example:

    >>> mix = keras_regularize.layers.RandomMix(
    ...     num_classes=10, mode="elem", seed=0)
    >>> images = np.random.default_rng(0).random((8, 16, 16, 3), "float32")
    >>> mixed, targets = mix((images, np.arange(8)))
    >>> tuple(mixed.shape), tuple(targets.shape)
    ((8, 16, 16, 3), (8, 10))

    Each sample was blended (MixUp) or got a box pasted (CutMix). A
    callback may shift the balance, e.g. to CutMix only:

    >>> mix.switch_prob = 1.0
    >>> mix.get_config()["switch_prob"]
    1.0

    References:
        - [Zhang et al., 2018](https://arxiv.org/abs/1710.09412)
        - [Yun et al., 2019](https://arxiv.org/abs/1905.04899)
    """

    MIX_SCALARS = {
        "mixup_alpha": "mixup_alpha",
        "cutmix_alpha": "cutmix_alpha",
        "switch_prob": "switch_prob",
    }

    def __init__(
        self, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, **kwargs
    ):
        super().__init__(**kwargs)
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob

    mixup_alpha = ScalarVariable(check_alpha, "MixUp's Beta parameter.")
    cutmix_alpha = ScalarVariable(check_alpha, "CutMix's Beta parameter.")
    switch_prob = ScalarVariable(
        check_probability, "Chance of CutMix over MixUp."
    )
