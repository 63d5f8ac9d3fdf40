"""Step overhead of GradientClipping against the bare optimizer it wraps.

One training step (`train_on_batch`: forward, backward, optimizer update) of
an MLP with about 10.5M parameters (1024 -> 2048 -> 2048 -> 2048 -> 10),
batch 64, Adam, compiled on JAX and TensorFlow (XLA) and eager on torch.
Candidates: the bare Adam; Adam with Keras's own `global_clipnorm` (what the
"global_norm" method reproduces); and GradientClipping with each method.
All models start from the same weights. The candidates are timed in
alternating rounds and the median of the round medians is reported, which
damps drift on a shared machine. Target: "global_norm" <= 1.05x bare.
"""

import os
import statistics
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import _harness  # noqa: E402

from keras_regularize.optimizers import GradientClipping  # noqa: E402

BACKEND = _harness.BACKEND
SMOKE = _harness.SMOKE
JIT = BACKEND != "torch"
WIDTH = 256 if SMOKE else 2048
INPUT = 128 if SMOKE else 1024
BATCH = 64
ROUNDS = 1 if SMOKE else 5
RUNS = 2 if SMOKE else 7


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((INPUT,)),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _candidates():
    def clip(method):
        return lambda: GradientClipping(keras.optimizers.Adam(1e-4), method)

    return {
        "Adam (bare)": lambda: keras.optimizers.Adam(1e-4),
        "Adam(global_clipnorm=1.0) (Keras)": lambda: keras.optimizers.Adam(
            1e-4, global_clipnorm=1.0
        ),
        'GradientClipping "none" (record only)': clip("none"),
        'GradientClipping "global_norm"': clip("global_norm"),
        'GradientClipping "value"': clip("value"),
        'GradientClipping "agc"': clip("agc"),
        'GradientClipping "auto"': clip("auto"),
    }


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, INPUT)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH,))
    steps = {}
    params = None
    for name, make in _candidates().items():
        model = _model()
        params = model.count_params()
        model.compile(
            optimizer=make(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=JIT,
        )

        def step(model=model):
            return model.train_on_batch(x, y)

        _harness.timeit(step, warmup=2, runs=1)  # compile
        steps[name] = step
    medians = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, step in steps.items():
            medians[name].append(_harness.timeit(step, warmup=1, runs=RUNS))
    times = {n: statistics.median(m) for n, m in medians.items()}
    base = times["Adam (bare)"]
    rows = [
        (name, f"{1000 * t:.1f}", f"{t / base:.3f}x")
        for name, t in times.items()
    ]
    notes = [
        f"MLP {INPUT}-{WIDTH}-{WIDTH}-{WIDTH}-10, {params:,} parameters, "
        f"batch {BATCH}, Adam, jit_compile={JIT}; median of {ROUNDS} "
        f"alternating rounds of {RUNS} timed steps each.",
        "GradientClipping always adds one pass over the gradients for the "
        "global norm it records; global_norm/auto add one rescale, value a "
        "max-abs pass and a clip, agc per-unit norms of weights and gradients.",
        "2-core CPU: ratios within a few percent are noise (see the Keras "
        "global_clipnorm row, the same work as global_norm).",
    ]
    _harness.write_table(
        "gradient_clipping",
        "GradientClipping step overhead vs the bare optimizer",
        ["optimizer", "ms / step", "vs bare"],
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
