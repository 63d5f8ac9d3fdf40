"""Shared bits of the example scripts: smoke mode, data, output folder."""

import os

import keras

from keras_regularize._demo.data import load_digits_split

SMOKE = os.environ.get("KR_SMOKE") == "1"
OUT = os.environ.get("KR_EXAMPLES_OUT", "example_outputs")


def epochs(full):
    """`full` epochs normally, 2 in smoke mode (`KR_SMOKE=1`)."""
    return 2 if SMOKE else full


def digits():
    """(x_train, y_train, x_val, y_val) from scikit-learn's bundled digits."""
    return load_digits_split()


def out_path(name):
    os.makedirs(OUT, exist_ok=True)
    return os.path.join(OUT, name)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mlp(hidden=512, depth=2, dropout=0.0, num_classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,))]
    for _ in range(depth):
        layers += [keras.layers.Dense(hidden, activation="relu")]
        if dropout:
            layers += [keras.layers.Dropout(dropout)]
    layers += [keras.layers.Dense(num_classes)]
    return keras.Sequential(layers)


SPARSE_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
