"""Losses."""

from keras_regularize.losses.distillation_loss import DistillationLoss
from keras_regularize.losses.sparse_categorical_crossentropy import (
    SparseCategoricalCrossentropy,
)

__all__ = [
    "DistillationLoss",
    "SparseCategoricalCrossentropy",
]
