"""Per-step cost of an exponential moving average of ~20M weights.

Three configurations of one MLP (about 21M parameters, small batches, so a
step is dominated by weight-sized work, the worst case for an average),
side by side in one process, as ratios to training with no averaging:

- no averaging;
- Keras's own optimizer EMA (`SGD(use_ema=True)`);
- `ExponentialMovingAverage(evaluate=False)` (in-step, with warmup).

Each configuration is one compiled model trained with `train_on_batch` on
one fixed batch; the callback is attached as `fit` attaches it
(`set_model`, then `on_train_begin`), so each step runs its in-step
update. Steps are timed in turns (`_harness.interleaved`: warm-up, then
rounds in a rotated order, each step synced by reading its loss), and the
median time per step of each configuration is kept. Target: the overhead
of `ExponentialMovingAverage` is no more than Keras's own.
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

from keras_regularize.callbacks.exponential_moving_average import (  # noqa: E402
    ExponentialMovingAverage,
)

WIDTH = 64 if SMOKE else int(os.environ.get("KR_BENCH_WIDTH", "2560"))
DEPTH = 4
INPUT = 16 if SMOKE else 512
BATCH = 16
ROUNDS = 1 if SMOKE else int(os.environ.get("KR_BENCH_ROUNDS", "9"))
PER_ROUND = 1 if SMOKE else int(os.environ.get("KR_BENCH_PER_ROUND", "4"))


def build(use_ema):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((INPUT,))]
    layers += [
        keras.layers.Dense(WIDTH, activation="relu") for _ in range(DEPTH)
    ]
    layers += [keras.layers.Dense(1)]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(
            1e-4, use_ema=use_ema, ema_momentum=0.999
        ),
        loss="mse",
        jit_compile=BACKEND != "torch",
    )
    return model


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, INPUT)).astype("float32")
    y = rng.normal(size=(BATCH, 1)).astype("float32")
    plain, keras_ema, ours = build(False), build(True), build(False)
    params = plain.count_params()
    callback = ExponentialMovingAverage(decay=0.999, evaluate=False)
    ours.train_on_batch(x, y)  # builds the optimizer, as fit would
    callback.set_model(ours)
    callback.on_train_begin()

    def step(model):
        return lambda: model.train_on_batch(x, y)

    per_step = interleaved(
        {
            "no averaging": step(plain),
            "Keras SGD(use_ema=True)": step(keras_ema),
            "ExponentialMovingAverage": step(ours),
        },
        warmup=3,
        rounds=ROUNDS,
        per_round=PER_ROUND,
    )
    counted = callback.steps
    callback.on_train_end()
    base = per_step["no averaging"]
    rows = []
    for name, seconds in per_step.items():
        rows.append(
            [
                name,
                f"{seconds * 1e3:.1f}",
                f"{seconds / base:.3f}",
                f"{(seconds / base - 1.0) * 100:+.1f}%",
            ]
        )
    keras_over = per_step["Keras SGD(use_ema=True)"] - base
    ours_over = per_step["ExponentialMovingAverage"] - base
    write_table(
        "ema",
        "EMA per-step overhead",
        ["configuration", "ms / step", "ratio to no averaging", "overhead"],
        rows,
        notes=[
            f"MLP {INPUT}-{'-'.join([str(WIDTH)] * DEPTH)}-1, {params:,} "
            f"parameters, batch {BATCH}, SGD, jit_compile="
            f"{BACKEND != 'torch'}; median per step over {ROUNDS} "
            f"interleaved rounds of {PER_ROUND} steps per configuration.",
            f"Overheads in ms per step: Keras use_ema "
            f"{keras_over * 1e3:+.2f}, ExponentialMovingAverage "
            f"{ours_over * 1e3:+.2f} (target: ours <= Keras's). "
            f"The callback averaged {counted} steps.",
        ],
    )


if __name__ == "__main__":
    main()
