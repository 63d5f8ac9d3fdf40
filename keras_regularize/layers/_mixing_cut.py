"""CutMix's arguments, declared and checked once for every layer that cuts."""

from keras_regularize._validation import check_bool
from keras_regularize._validation import check_data_format
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize._validation import fail_shape
from keras_regularize.layers._mixing_layer import BaseMixing
from keras_regularize.layers._mixing_math import spatial_axes


def check_minmax(name, value):
    """`None`, or two increasing numbers in `(0, 1]`."""
    if value is None:
        return None
    expected = "None or two increasing numbers in (0, 1]"
    try:
        lo, hi = value
        lo = check_number(name, lo, 0.0, 1.0, low_open=True)
        hi = check_number(name, hi, 0.0, 1.0, low_open=True)
    except (TypeError, ValueError):
        fail(name, expected, value)
    if not lo < hi:
        fail(name, expected, value)
    return (lo, hi)


class BaseCutMixing(BaseMixing):
    """`BaseMixing` with CutMix's `correct_lam`, `minmax` and `data_format`.

    Images must have rank 3 (a segment of steps is cut), 4 (a rectangle) or
    5 (a cuboid); `_cut_arguments(images)` gives `mix_batch` the box
    settings.
    """

    def __init__(
        self, *, correct_lam=True, minmax=None, data_format=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.correct_lam = check_bool("correct_lam", correct_lam)
        self.minmax = check_minmax("minmax", minmax)
        self.data_format = check_data_format("data_format", data_format)

    def _check_images(self, images):
        self._axes(images)

    def _axes(self, images):
        rank = len(images.shape)
        if rank not in (3, 4, 5):
            fail_shape(
                "inputs",
                "inputs of rank 3 (batch, steps, channels), 4 (images) or 5 "
                "(volumes) for CutMix",
                images.shape,
            )
        return spatial_axes(rank, self.data_format)

    def _cut_arguments(self, images):
        return {
            "correct_lam": self.correct_lam,
            "minmax": self.minmax,
            "axes": self._axes(images),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "correct_lam": self.correct_lam,
            "minmax": self.minmax,
            "data_format": self.data_format,
        }
