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


def noisy_digits_split(train_size=400, label_noise=0.3, seed=SPLIT_SEED):
    """A small training split with noisy labels, and a clean validation split.

    `train_size` digits (stratified) are kept for training and all the
    others for validation. A `label_noise` share of the *training* labels is
    replaced by a class drawn uniformly at random (it may land on the true
    class); validation labels stay clean. The network can then memorize the
    noise: training accuracy on the given labels near 1, validation far
    below, the chapter's severe-overfitting regime.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, train_size=train_size, stratify=y, random_state=seed
    )
    return x_train, add_label_noise(y_train, label_noise, seed), x_val, y_val


def add_label_noise(y, share, seed=SPLIT_SEED, classes=10):
    """A copy of `y` with a `share` of labels replaced by random classes."""
    rng = np.random.default_rng(seed)
    noisy = rng.random(len(y)) < share
    y = np.array(y, dtype="int32")
    y[noisy] = rng.integers(0, classes, int(noisy.sum()), dtype="int32")
    return y


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
