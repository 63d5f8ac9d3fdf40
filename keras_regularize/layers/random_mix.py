"""MixUp or CutMix, chosen at random for each batch, pair or sample."""

from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_data_format
from keras_regularize._variables import ScalarVariable
from keras_regularize.layers._mixing import BaseMixing
from keras_regularize.layers._mixing import check_alpha
from keras_regularize.layers._mixing import check_minmax
from keras_regularize.layers._mixing import check_probability
from keras_regularize.layers._mixing import mix_batch


@export("keras_regularize.layers.RandomMix")
class RandomMix(BaseMixing):
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
    variables, so callbacks may change them during training. To mix on
    device inside `fit`, wrap the model in
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

    >>> layer = keras_regularize.layers.RandomMix(
    ...     num_classes=10, mode="elem", seed=0)
    >>> images = np.random.default_rng(0).random((5, 16, 16, 3))
    >>> mixed, labels = layer((images.astype("float32"), np.arange(5)))
    >>> tuple(mixed.shape), tuple(labels.shape)
    ((5, 16, 16, 3), (5, 10))

    References:
        - [Zhang et al., 2018](https://arxiv.org/abs/1710.09412)
        - [Yun et al., 2019](https://arxiv.org/abs/1905.04899)
    """

    _needs_spatial_axes = True

    def __init__(
        self,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        switch_prob=0.5,
        num_classes=None,
        label_smoothing=0.0,
        mode="batch",
        probability=1.0,
        correct_lam=True,
        minmax=None,
        data_format=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            mode=mode,
            probability=probability,
            seed=seed,
            **kwargs,
        )
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.correct_lam = check_bool("correct_lam", correct_lam)
        self.minmax = check_minmax("minmax", minmax)
        self.data_format = check_data_format("data_format", data_format)

    mixup_alpha = ScalarVariable(check_alpha, "MixUp's Beta parameter.")
    cutmix_alpha = ScalarVariable(check_alpha, "CutMix's Beta parameter.")
    switch_prob = ScalarVariable(
        check_probability, "Chance of CutMix over MixUp."
    )

    def _mix(self, xp, images):
        return mix_batch(
            xp,
            images,
            mode=self.mode,
            probability=xp.value(self.probability_variable),
            mixup_alpha=xp.value(self.mixup_alpha_variable),
            cutmix_alpha=xp.value(self.cutmix_alpha_variable),
            switch_prob=xp.value(self.switch_prob_variable),
            correct_lam=self.correct_lam,
            minmax=self.minmax,
            axes=self._axes(images),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "mixup_alpha": self.mixup_alpha,
            "cutmix_alpha": self.cutmix_alpha,
            "switch_prob": self.switch_prob,
            "correct_lam": self.correct_lam,
            "minmax": self.minmax,
            "data_format": self.data_format,
        }
