"""Backend-agnostic regularization components for Keras 3."""

import importlib.metadata

from keras_regularize import _cli_env

_cli_env.preselect_backend()  # before anything imports keras

from keras_regularize import callbacks  # noqa: E402
from keras_regularize import constraints  # noqa: E402
from keras_regularize import layers  # noqa: E402
from keras_regularize import losses  # noqa: E402
from keras_regularize import models  # noqa: E402
from keras_regularize import optimizers  # noqa: E402
from keras_regularize import regularizers  # noqa: E402

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
