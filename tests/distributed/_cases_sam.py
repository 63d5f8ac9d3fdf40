"""SharpnessAwareMinimization under the distribution engines (plug-in).

`rate` is SAM's `rho`: at 0 a SAM step is a plain step, so the distributed
run must equal the single-device one. Under TF `MirroredStrategy` each
replica perturbs with its own gradient (m-sharpness), so at `rho > 0` the
two runs differ by design; JAX `DataParallel` compiles one program over the
global batch, so they agree (engines_test checks both facts it knows about).
"""

import keras
import numpy as np

from keras_regularize.models.sharpness_aware_minimization import (
    SharpnessAwareMinimization,
)


def sam_case(rate, seed):
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model = SharpnessAwareMinimization(inner, rho=0.1 * rate)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) / 4.0).astype("float32")
    return model, (x, y)


CASES = {"sam": sam_case}
