"""Weight constraints."""

from keras_regularize.constraints.max_norm import MaxNorm
from keras_regularize.constraints.max_norm import apply_max_norm

__all__ = [
    "MaxNorm",
    "apply_max_norm",
]
