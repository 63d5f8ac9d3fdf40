"""Every stochastic-depth layer together in one compiled training run.

On torch, `jit_compile=True` means `torch.compile`, which takes about a
minute here, so this one combined test stands in for a compiled step per
layer (the shared contract runs torch eagerly).
"""

import keras
import numpy as np
import pytest

from keras_regularize import layers
from tests import harness

pytestmark = pytest.mark.slow if harness.BACKEND == "torch" else []


def test_all_layers_train_and_take_rate_changes_under_jit_compile():
    inputs = keras.Input((6, 6, 4))
    x = layers.DropBlock2D(0.2, 3, data_format="channels_last", seed=0)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8)(x)
    branch = keras.layers.Dense(8)(x)
    x = layers.StochasticDepth(0.3, seed=1)([x, layers.DropPath(0.2)(branch)])
    x = layers.StochasticResidual(keras.layers.Dense(8), 0.5, seed=2)(x)
    x = layers.StochasticResidual(
        keras.layers.Dense(8), 0.5, mode="subset", seed=3
    )(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(keras.optimizers.SGD(1e-3), "mse", jit_compile=True)
    drop_layers = [
        layer for layer in model.layers if hasattr(layer, "rate_variable")
    ]
    assert len(drop_layers) == 5

    class Ramp(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            for layer in drop_layers:
                if getattr(layer, "mode", None) != "subset":
                    layer.rate = 0.1 * epoch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 4)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=0, callbacks=[Ramp()]
    )
    assert np.all(np.isfinite(history.history["loss"]))
    for layer in drop_layers:
        if getattr(layer, "mode", None) != "subset":
            assert layer.rate == pytest.approx(0.2)
            value = float(harness.to_numpy(layer.rate_variable))
            assert value == pytest.approx(0.2)
