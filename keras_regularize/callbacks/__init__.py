"""Training callbacks."""

from keras_regularize.callbacks.gradient_norm_logger import GradientNormLogger

__all__ = [
    "GradientNormLogger",
]
