"""Regularization layers."""

from keras_regularize.layers.drop_block_2d import DropBlock2D
from keras_regularize.layers.drop_path import DropPath
from keras_regularize.layers.drop_path_rates import drop_path_rates
from keras_regularize.layers.stochastic_depth import StochasticDepth
from keras_regularize.layers.stochastic_residual import StochasticResidual

__all__ = [
    "DropBlock2D",
    "DropPath",
    "StochasticDepth",
    "StochasticResidual",
    "drop_path_rates",
]
