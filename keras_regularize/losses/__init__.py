"""Losses."""

from keras_regularize.losses.sparse_categorical_crossentropy import (
    SparseCategoricalCrossentropy,
)

__all__ = [
    "SparseCategoricalCrossentropy",
]
