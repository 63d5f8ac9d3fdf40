"""Training callbacks."""

from keras_regularize.callbacks.early_stopping_restore import (
    EarlyStoppingRestore,
)

__all__ = [
    "EarlyStoppingRestore",
]
