"""Model wrappers: distillation, on-device mixing, Monte Carlo prediction."""

from keras_regularize.models.distiller import Distiller
from keras_regularize.models.mc_predict import mc_predict
from keras_regularize.models.mixing_model import MixingModel
from keras_regularize.models.with_mc_dropout import with_mc_dropout

__all__ = [
    "Distiller",
    "MixingModel",
    "mc_predict",
    "with_mc_dropout",
]
