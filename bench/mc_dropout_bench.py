"""MC dropout: `mc_predict` vs a loop of `model(x, training=True)` calls.

30 samples for 1,024 inputs through a 784-512-512-10 MLP with dropout, on
the backend chosen by `KERAS_BACKEND`. The baseline is what users write
today: a Python loop of 30 `model(x, training=True)` calls (which also puts
batch normalization in training mode). `mc_predict` runs on the same model
converted by `with_mc_dropout` (weights shared) and returns the statistics,
not just the samples; its chunking strategies are timed side by side to
pick `mc_predict`'s "auto" strategy and `_backend.MC_ROWS_PER_PASS`.
"""

import statistics
import time

import keras
import numpy as np
from _harness import BACKEND
from _harness import SMOKE
from _harness import sync
from _harness import write_table

import keras_regularize
from keras_regularize._backend import MC_ROWS_PER_PASS

INPUTS, SAMPLES, WIDTH = (64, 4, 64) if SMOKE else (1024, 30, 512)
RUNS = 2 if SMOKE else 7


def build_model():
    inputs = keras.Input((784,))
    h = keras.layers.Dense(WIDTH, activation="relu")(inputs)
    h = keras.layers.Dropout(0.2)(h)
    h = keras.layers.Dense(WIDTH, activation="relu")(h)
    h = keras.layers.Dropout(0.2)(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inputs, outputs)


def main():
    keras.utils.set_random_seed(0)
    model = build_model()
    mc_model = keras_regularize.models.with_mc_dropout(model)
    x = np.random.default_rng(0).normal(size=(INPUTS, 784)).astype("float32")
    x_backend = keras.ops.convert_to_tensor(x)

    def loop():
        outs = [model(x_backend, training=True) for _ in range(SAMPLES)]
        return keras.ops.mean(keras.ops.stack(outs), axis=0)

    def mc(strategy, rows=None):
        batch = None if rows is None else max(1, rows // SAMPLES)
        if strategy == "loop" and rows is not None:
            batch = rows

        def run():
            return mc_predict(
                mc_model,
                x,
                samples=SAMPLES,
                batch_size=batch,
                strategy=strategy,
            ).mean

        return run

    mc_predict = keras_regularize.models.mc_predict
    default_strategy = "tile"
    total = INPUTS * SAMPLES
    candidates = [
        ("loop of `model(x, training=True)` (baseline)", loop),
        (
            f"`mc_predict` defaults ({default_strategy}, "
            f"{MC_ROWS_PER_PASS[BACKEND]:,} rows/pass)",
            mc("auto"),
        ),
    ]
    for strategy, sizes in (
        ("tile", (256, 1024, 4096, total)),
        ("tile_inputs", (1024, total)),
    ):
        for rows in sizes:
            label = "all" if rows == total else f"{rows:,}"
            name = f"`mc_predict` {strategy}, {label} rows/pass"
            candidates.append((name, mc(strategy, rows)))
    candidates.append(
        ("`mc_predict` loop, 1,024 rows/pass", mc("loop", INPUTS))
    )

    # Interleaved: one timing of every candidate per round, so that load
    # from other processes on a shared machine hits all of them alike.
    for _, fn in candidates:
        for _ in range(2):
            sync(fn())
    times = [[] for _ in candidates]
    for _ in range(RUNS):
        for i, (_, fn) in enumerate(candidates):
            start = time.perf_counter()
            sync(fn())
            times[i].append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    rows = [
        [name, f"{m * 1e3:.1f}", f"{m / medians[0]:.2f}x"]
        for (name, _), m in zip(candidates, medians)
    ]
    write_table(
        "mc_dropout",
        f"MC dropout, {SAMPLES} samples of {INPUTS} inputs, "
        f"784-{WIDTH}-{WIDTH}-10 MLP",
        ["method", "ms (median)", "vs loop"],
        rows,
        notes=[
            f"Median of {RUNS} interleaved rounds after 2 warm-ups, one "
            "process (each round times every candidate once).",
            "Dropout(0.2) follows each hidden ReLU; `tile` computes the "
            "first Dense once per input (it precedes all randomness), "
            "`tile_inputs` runs the whole MLP on the tiled batch.",
            "The baseline returns only the mean; `mc_predict` also returns "
            "variance, entropy and mutual information.",
            "`mc_predict` runs a compiled predict function (XLA on JAX "
            "and TensorFlow, eager on torch) with `training=False`.",
            "Full sizes (1,024 inputs, 30 samples, width 512) on a 2-core "
            "CPU; ratios within one run are meaningful, absolute times vary "
            "between runs.",
        ],
    )


if __name__ == "__main__":
    main()
