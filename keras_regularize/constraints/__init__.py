"""Weight constraints."""

from keras_regularize.constraints.apply_max_norm import apply_max_norm
from keras_regularize.constraints.max_norm import MaxNorm

__all__ = [
    "MaxNorm",
    "apply_max_norm",
]
