"""Engine case: `StochasticWeightAveraging` beside `EarlyStoppingRestore`.

Plugged into `_engines_worker.py` (which imports every `_cases_*.py`). A
batch-norm regressor is averaged from epoch 1 on, with the learning rate
annealed to `swa_lr`, under JAX `DataParallel` and TF `MirroredStrategy`.
A checker callback after it raises inside `fit` unless

- the average equals the NumPy mean of the epoch-end weights of epochs
  1, 2, 3,
- the averages live on as many devices as the weights they mirror, and
- the batch-norm statistics recalibrated (through a distributed
  `predict`) for the average at the end of training are the mean and
  variance of that layer's inputs, `x @ kernel + bias` under the averaged
  first `Dense`, computed here in NumPy.

`final="averaged"` puts the average in place first; `EarlyStoppingRestore`
(monitoring the scripted score) then restores the raw weights of epoch 1,
so the engine test's restore assertions keep their meaning, and the
rate-0 single-device and distributed runs are compared as usual.
"""

import keras
import numpy as np

import keras_regularize as kr
from keras_regularize.callbacks.stochastic_weight_averaging import (
    StochasticWeightAveraging,
)
from tests.distributed._case_helpers import device_count
from tests.distributed._case_helpers import to_float64

START = 1
TOL = 1e-5


def _max_error(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


class SWAChecker(keras.callbacks.Callback):
    """Raises in `fit` unless SWA's average and statistics are right."""

    def __init__(self, swa, x):
        super().__init__()
        self.swa = swa
        self.x = x.astype("float64")

    def on_train_begin(self, logs=None):
        self.epoch_weights = []

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= START:
            self.epoch_weights.append(
                [to_float64(w) for w in self.model.trainable_weights]
            )

    def on_train_end(self, logs=None):
        swa, model = self.swa, self.model
        expected = [np.mean(ws, axis=0) for ws in zip(*self.epoch_weights)]
        trainable = [id(v) for v in model.trainable_weights]
        averaged = dict(
            zip([id(v) for v in model.weights], swa.averaged_weights())
        )
        error = _max_error([averaged[i] for i in trainable], expected)
        if error > TOL:
            raise AssertionError(f"SWA differs from the NumPy mean: {error}")
        for average, source in zip(swa._averages, swa._sources):
            if device_count(average) != device_count(source):
                raise AssertionError(
                    f"average on {device_count(average)} devices, weights on "
                    f"{device_count(source)}"
                )
        dense = model.get_layer("dense_in")
        bn = model.get_layer("bn")
        inputs = self.x @ averaged[id(dense.kernel)] + averaged[id(dense.bias)]
        stats = [averaged[id(bn.moving_mean)], averaged[id(bn.moving_variance)]]
        error = _max_error(stats, [inputs.mean(axis=0), inputs.var(axis=0)])
        if error > 1e-4:
            raise AssertionError(f"BN recalibration is off by {error}")


def swa_case(rate, seed):
    """A batch-norm `DropPath` regressor with SWA from epoch 1."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) / 4.0).astype("float32")
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, name="dense_in")(inputs)
    # Synchronized on TensorFlow: under MirroredStrategy a plain BN layer
    # normalizes each replica's half batch by its own moments, which no
    # single-device run reproduces. JAX DataParallel computes global moments
    # anyway (and Keras accepts `synchronized=True` on TensorFlow only).
    synchronized = keras.backend.backend() == "tensorflow"
    h = keras.layers.BatchNormalization(name="bn", synchronized=synchronized)(h)
    h = keras.layers.Activation("tanh")(h)
    branch = keras.layers.Dense(16, activation="tanh")(h)
    branch = kr.layers.DropPath(rate, seed=seed + 5)(branch)
    h = keras.layers.Add()([h, branch])
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    swa = StochasticWeightAveraging(
        start_epoch=START,
        swa_lr=0.025,
        anneal_epochs=1,
        recalibration_data=x,
        evaluate=False,
        final="averaged",
    )
    return model, (x, y), [swa, SWAChecker(swa, x)]


CASES = {"swa": swa_case}
