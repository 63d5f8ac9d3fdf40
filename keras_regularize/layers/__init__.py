"""Regularization layers."""

from keras_regularize.layers.cut_mix_layer import CutMixLayer
from keras_regularize.layers.drop_block_2d import DropBlock2D
from keras_regularize.layers.drop_path import DropPath
from keras_regularize.layers.drop_path import drop_path_rates
from keras_regularize.layers.mc_dropout import MCDropout
from keras_regularize.layers.mixup_layer import MixupLayer
from keras_regularize.layers.random_mix import RandomMix
from keras_regularize.layers.stochastic_depth import StochasticDepth
from keras_regularize.layers.stochastic_residual import StochasticResidual
from keras_regularize.layers.weight_noise import WeightNoise

__all__ = [
    "CutMixLayer",
    "DropBlock2D",
    "DropPath",
    "MCDropout",
    "MixupLayer",
    "RandomMix",
    "StochasticDepth",
    "StochasticResidual",
    "WeightNoise",
    "drop_path_rates",
]
