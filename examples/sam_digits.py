"""Exercise: sharpness-aware minimization (SAM, ASAM) on the digits.

The same MLP is trained from the same initial weights three times: with
plain SGD with momentum, with `kr.models.SharpnessAwareMinimization`
(`rho=0.05`), and with ASAM (`adaptive=True, rho=0.5`). Each SAM step takes
two forward and backward passes; `every=2` halves the extra cost. The
script prints the validation accuracy of each run and the measured time per
epoch, so the accuracy bought can be set against the cost.

Run: `KERAS_BACKEND=jax python examples/sam_digits.py` (`KR_SMOKE=1` for a
few-second check).
"""

import time

import keras
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp

import keras_regularize as kr
from keras_regularize.models.sharpness_aware_minimization import (
    SharpnessAwareMinimization,
)


def run(name, wrap):
    x_train, y_train, x_val, y_val = digits()
    model = wrap(mlp(hidden=128, seed=0))
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=SPARSE_CE,
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=epochs(30),
        validation_data=(x_val, y_val),
        verbose=0,
    )
    seconds = (time.perf_counter() - start) / len(history.history["loss"])
    accuracy = history.history["val_accuracy"][-1]
    print(f"{name:>12}: val accuracy {accuracy:.3f}, {seconds:.2f} s/epoch")
    return accuracy


def main():
    print(f"keras_regularize {kr.__version__}, {keras.backend.backend()}")
    run("plain", lambda m: m)
    run("SAM", lambda m: SharpnessAwareMinimization(m, rho=0.05))
    run(
        "ASAM",
        lambda m: SharpnessAwareMinimization(m, rho=0.5, adaptive=True),
    )
    run(
        "SAM every=2",
        lambda m: SharpnessAwareMinimization(m, rho=0.05, every=2),
    )


if __name__ == "__main__":
    main()
