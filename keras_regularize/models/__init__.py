"""Model wrappers: distillation, on-device mixing, Monte Carlo prediction."""

from keras_regularize.models.mixing_model import MixingModel

__all__ = [
    "MixingModel",
]
