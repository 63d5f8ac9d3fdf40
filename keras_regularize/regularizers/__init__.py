"""Weight regularizers."""

from keras_regularize.regularizers.elastic_net import ElasticNet

__all__ = [
    "ElasticNet",
]
