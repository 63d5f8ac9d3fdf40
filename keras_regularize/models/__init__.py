"""Model wrappers: distillation, on-device mixing, Monte Carlo prediction,
sharpness-aware minimization, retrofitting stochastic depth."""

from keras_regularize.models._retrofit import add_regularization
from keras_regularize.models.distiller import Distiller
from keras_regularize.models.mixing_model import MixingModel
from keras_regularize.models.monte_carlo import MCPrediction
from keras_regularize.models.monte_carlo import mc_predict
from keras_regularize.models.monte_carlo import with_mc_dropout
from keras_regularize.models.sharpness_aware_minimization import (
    SharpnessAwareMinimization,
)

__all__ = [
    "Distiller",
    "MCPrediction",
    "MixingModel",
    "SharpnessAwareMinimization",
    "add_regularization",
    "mc_predict",
    "with_mc_dropout",
]
