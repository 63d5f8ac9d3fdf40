"""The `keras-regularize` demo: regularization on real handwritten digits."""
