"""Exercise: add stochastic depth to keras.applications models after the fact.

Builds MobileNetV2 (and, outside smoke mode, ResNet50 and ConvNeXtTiny)
with `weights=None` on 32x32 inputs, retrofits drop path and head dropout
with `keras_regularize.models.add_regularization`, prints the report, checks
that inference is unchanged, and fine-tunes the result for a few steps on
random data. With `KR_SMOKE=1` it finishes in seconds.
"""

import warnings

import keras
import numpy as np
from _common import SMOKE

import keras_regularize as kr

NAMES = (
    ["MobileNetV2"] if SMOKE else ["MobileNetV2", "ResNet50", "ConvNeXtTiny"]
)


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(16,))
    for name in NAMES:
        keras.utils.set_random_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # input-size notes, no download
            model = getattr(keras.applications, name)(
                weights=None, input_shape=(32, 32, 3), classes=10
            )
        new_model, report = kr.models.add_regularization(
            model, drop_path=0.1, head_dropout=0.2, seed=0
        )
        print(report)
        same = np.array_equal(
            model.predict(x[:2], verbose=0), new_model.predict(x[:2], verbose=0)
        )
        print(f"{name}: inference unchanged: {same}")
        new_model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
        history = new_model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        print(f"{name}: one epoch, loss {history.history['loss'][-1]:.3f}\n")


if __name__ == "__main__":
    main()
