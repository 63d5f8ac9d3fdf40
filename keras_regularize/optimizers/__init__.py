"""Optimizer wrappers."""

from keras_regularize.optimizers.gradient_clipping import GradientClipping
from keras_regularize.optimizers.gradient_noise import GradientNoise

__all__ = [
    "GradientClipping",
    "GradientNoise",
]
