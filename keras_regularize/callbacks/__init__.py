"""Training callbacks."""

from keras_regularize.callbacks.early_stopping_restore import (
    EarlyStoppingRestore,
)
from keras_regularize.callbacks.exponential_moving_average import (
    ExponentialMovingAverage,
)
from keras_regularize.callbacks.gradient_norm_logger import GradientNormLogger
from keras_regularize.callbacks.stochastic_weight_averaging import (
    StochasticWeightAveraging,
)

__all__ = [
    "EarlyStoppingRestore",
    "ExponentialMovingAverage",
    "GradientNormLogger",
    "StochasticWeightAveraging",
]
