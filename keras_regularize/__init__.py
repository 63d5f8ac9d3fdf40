"""Backend-agnostic regularization components for Keras 3."""

import importlib.metadata

# Importing every subpackage registers every class with Keras, so `.keras`
# files load right after `import keras_regularize` with no `custom_objects`.
# Nothing else happens on import: the command line picks its backend in the
# launcher `keras_regularize_cli`, before this package is imported.
from keras_regularize import callbacks
from keras_regularize import constraints
from keras_regularize import experiments
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
    "experiments",
    "layers",
    "losses",
    "models",
    "optimizers",
    "regularizers",
    "__version__",
]
