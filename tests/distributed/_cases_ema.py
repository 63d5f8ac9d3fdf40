"""Engine case: `ExponentialMovingAverage` beside `EarlyStoppingRestore`.

Plugged into `_engines_worker.py` (which imports every `_cases_*.py`). The
in-step average runs under JAX `DataParallel` and TF `MirroredStrategy`; a
checker callback after it recomputes the EMA from the raw weights of every
step and raises inside `fit` if the callback's average differs, or if the
averages do not live on as many devices as the weights they mirror. The
engine test then holds the case to its usual assertions: `final="averaged"`
puts the average in place first, and `EarlyStoppingRestore` (monitoring the
scripted score) restores the raw weights of epoch 1 after it, whatever the
callback order, so its restore assertions keep their meaning.
"""

import keras
import numpy as np

import keras_regularize as kr
from keras_regularize.callbacks.exponential_moving_average import (
    ExponentialMovingAverage,
)
from tests.distributed._case_helpers import device_count
from tests.distributed._case_helpers import to_float64

DECAY = 0.6  # warmup governs steps 1-12, the decay the rest
TOL = 1e-5


class EMAChecker(keras.callbacks.Callback):
    """Raises in `fit` unless the EMA equals the one of the step weights."""

    def __init__(self, ema):
        super().__init__()
        self.ema = ema

    def on_train_begin(self, logs=None):
        self.average = [to_float64(w) for w in self.model.trainable_weights]
        self.t = 0

    def on_train_batch_end(self, batch, logs=None):
        self.t += 1
        d = min(DECAY, (1 + self.t) / (10 + self.t))
        weights = [to_float64(w) for w in self.model.trainable_weights]
        self.average = [
            d * a + (1 - d) * w for a, w in zip(self.average, weights)
        ]

    def on_train_end(self, logs=None):
        ema = self.ema
        if ema.steps != self.t:
            raise AssertionError(f"EMA counted {ema.steps} of {self.t} steps")
        trainable = {id(v) for v in self.model.trainable_weights}
        got = [
            w
            for w, v in zip(ema.averaged_weights(), self.model.weights)
            if id(v) in trainable
        ]
        error = max(
            float(np.max(np.abs(g - a))) for g, a in zip(got, self.average)
        )
        if error > TOL:
            raise AssertionError(f"EMA differs from the manual one: {error}")
        for average, source in zip(ema._averages, ema._sources):
            if device_count(average) != device_count(source):
                raise AssertionError(
                    f"average on {device_count(average)} devices, weights on "
                    f"{device_count(source)}"
                )


def ema_case(rate, seed):
    """A `DropPath` regressor averaged in-step; EMA checked by a callback."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) / 4.0).astype("float32")
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    branch = keras.layers.Dense(16, activation="tanh")(h)
    branch = kr.layers.DropPath(rate, seed=seed + 5)(branch)
    h = keras.layers.Add()([h, branch])
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    ema = ExponentialMovingAverage(decay=DECAY, final="averaged")
    return model, (x, y), [ema, EMAChecker(ema)]


CASES = {"ema": ema_case}
