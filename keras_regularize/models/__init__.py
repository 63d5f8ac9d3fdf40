"""Model wrappers: distillation, on-device mixing, Monte Carlo prediction."""

from keras_regularize.models.distiller import Distiller

__all__ = ["Distiller"]
