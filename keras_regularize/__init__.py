"""Backend-agnostic regularization components for Keras 3."""

import importlib.metadata

from keras_regularize import callbacks
from keras_regularize import constraints
from keras_regularize import layers
from keras_regularize import losses
from keras_regularize import models
from keras_regularize import optimizers
from keras_regularize import regularizers

try:
    __version__ = importlib.metadata.version("keras-regularize")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "callbacks",
    "constraints",
    "layers",
    "losses",
    "models",
    "optimizers",
    "regularizers",
    "__version__",
]
