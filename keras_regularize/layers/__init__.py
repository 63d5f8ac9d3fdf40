"""Regularization layers."""

from keras_regularize.layers.drop_block_2d import DropBlock2D
from keras_regularize.layers.drop_path import DropPath
from keras_regularize.layers.drop_path_rates import drop_path_rates
from keras_regularize.layers.mc_dropout import MCDropout
from keras_regularize.layers.stochastic_depth import StochasticDepth
from keras_regularize.layers.stochastic_residual import StochasticResidual
from keras_regularize.layers.weight_noise import WeightNoise

__all__ = [
    "DropBlock2D",
    "DropPath",
    "MCDropout",
    "StochasticDepth",
    "StochasticResidual",
    "WeightNoise",
    "drop_path_rates",
]
