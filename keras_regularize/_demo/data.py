"""The handwritten digits bundled with scikit-learn, split once, stratified."""

import numpy as np

VAL_FRACTION = 0.5
SPLIT_SEED = 0


def load_digits_split(val_fraction=VAL_FRACTION):
    """Returns `(x_train, y_train, x_val, y_val)`: (N, 64) floats in [0, 1].

    1,797 real 8x8 images ship inside scikit-learn (no download). A
    `val_fraction` of each class (half by default) goes to validation, with
    a fixed seed, so every run and technique sees the same split and a large
    network can overfit the rest.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, stratify=y, random_state=SPLIT_SEED
    )
    return x_train, y_train, x_val, y_val


def digit_images(x):
    """(N, 64) -> (N, 8, 8) for plotting."""
    return np.asarray(x).reshape(-1, 8, 8)


def mlp(name, seed, hidden, dropout=0.0, input_noise=0.0, input_dim=64):
    """A ReLU MLP over flattened digits with 10 logits, seeded first.

    `hidden` lists the widths; `dropout` follows every hidden layer and
    `input_noise` (a Gaussian standard deviation) comes first, when set.
    """
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((input_dim,))]
    if input_noise:
        layers.append(keras.layers.GaussianNoise(input_noise, seed=seed))
    for width in hidden:
        layers.append(keras.layers.Dense(width, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name=name)
