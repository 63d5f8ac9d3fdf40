"""SharpnessAwareMinimization step time vs a plain step, per backend.

One epoch of `fit` (16 steps of a 256-row batch through a 784-512-512-10
MLP) for: a plain model, SAM (`every=1`), SAM `every=4`, and, on
TensorFlow, a hand-written keras-io-style SAM `train_step` (GradientTape,
`assign_add`/`assign_sub`). Ratios are to the plain step, timed in turns in
one process. Targets: SAM <= 2.1x, every=4 <= 1.35x.

Run: `KERAS_BACKEND=jax python bench/sam_bench.py` (`KR_BENCH_SMOKE=1` for a
quick check). Writes `bench/results/sam_<backend>.md`.
"""

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import BACKEND  # noqa: E402
from _harness import SMOKE  # noqa: E402
from _harness import interleaved  # noqa: E402
from _harness import write_table  # noqa: E402

from keras_regularize.models.sharpness_aware_minimization import (  # noqa: E402
    SharpnessAwareMinimization,
)

STEPS, BATCH = (2, 64) if SMOKE else (16, 256)


def mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def keras_io_sam(rho=0.05):
    """The keras-io example's SAM step (TensorFlow only)."""
    import tensorflow as tf

    class KerasIOSAM(keras.Model):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def call(self, x, training=None):
            return self.model(x, training=training)

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = self.compute_loss(y=y, y_pred=self.model(x))
            variables = self.model.trainable_variables
            grads = tape.gradient(loss, variables)
            norm = tf.linalg.global_norm(grads)
            scale = rho / (norm + 1e-12)
            shifts = []
            for g, v in zip(grads, variables):
                e = g * scale
                v.assign_add(e)
                shifts.append(e)
            with tf.GradientTape() as tape:
                loss = self.compute_loss(y=y, y_pred=self.model(x))
            grads = tape.gradient(loss, variables)
            for e, v in zip(shifts, variables):
                v.assign_sub(e)
            self.optimizer.apply_gradients(zip(grads, variables))
            return {"loss": loss}

    return KerasIOSAM(mlp())


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 784)).astype("float32")
    y = rng.integers(0, 10, size=STEPS * BATCH)
    builds = {
        "plain": mlp,
        "SAM": lambda: SharpnessAwareMinimization(mlp(), rho=0.05),
        "SAM every=4": lambda: SharpnessAwareMinimization(
            mlp(), rho=0.05, every=4
        ),
    }
    if BACKEND == "tensorflow":
        builds["keras-io SAM train_step"] = keras_io_sam
    runs = {}
    for name, build in builds.items():
        model = build()
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)

        def epoch(model=model):
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)

        runs[name] = epoch
    seconds = interleaved(runs, warmup=1, rounds=5, per_round=1)
    base = seconds["plain"]
    rows = [
        [name, f"{1e3 * s / STEPS:.2f}", f"{s / base:.2f}x"]
        for name, s in seconds.items()
    ]
    write_table(
        "sam",
        "SharpnessAwareMinimization step time",
        ["step", "ms/step", "vs plain"],
        rows,
        notes=[
            f"{STEPS} steps of batch {BATCH}, 784-512-512-10 MLP, SGD, "
            "jit_compile='auto'; medians of 5 interleaved epochs.",
            "Targets: SAM <= 2.1x, every=4 <= 1.35x (floor 2.0x and 1.25x).",
        ],
    )


if __name__ == "__main__":
    main()
