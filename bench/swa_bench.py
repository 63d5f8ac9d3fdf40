"""Stochastic weight averaging: epoch-end averaging and BN recalibration cost.

Two side-by-side measurements in one process, as ratios:

1. The epoch-end update of the average (`average += (w - average) / n`
   for every trainable variable) against one pass over the same weights
   (`buffer.assign(keras.ops.copy(w))` for every trainable variable, on
   the weights' device). Target: at most 1x.
2. Batch-norm recalibration (`BatchNormRecalibration.run`: one pass over
   the data, batch moments per layer, host combine, assign) against one
   `model.predict` over the same data at the same batch size. Target: at
   most 1.2x.
"""

import os
import sys

import keras
import numpy as np
from keras import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _harness import BACKEND  # noqa: E402
from _harness import SMOKE  # noqa: E402
from _harness import interleaved  # noqa: E402
from _harness import write_table  # noqa: E402

from keras_regularize.callbacks._batch_norm_recalibration import (  # noqa: E402
    BatchNormRecalibration,
)
from keras_regularize.callbacks.stochastic_weight_averaging import (  # noqa: E402
    StochasticWeightAveraging,
)

WIDTH = 64 if SMOKE else int(os.environ.get("KR_BENCH_WIDTH", "2048"))
DEPTH = 4
INPUT = 16 if SMOKE else 512
SAMPLES = 256 if SMOKE else int(os.environ.get("KR_BENCH_SAMPLES", "8192"))
BATCH = 64 if SMOKE else 512


def build(batch_norm):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((INPUT,))]
    for _ in range(DEPTH):
        layers.append(keras.layers.Dense(WIDTH))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Activation("relu"))
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss="mse",
        jit_compile=BACKEND != "torch",
    )
    return model


def averaging_rows():
    model = build(batch_norm=False)
    swa = StochasticWeightAveraging(start_epoch=0, evaluate=False)
    swa.set_model(model)
    swa._make_variables(model)
    sources = swa._sources
    buffers = [
        keras.Variable(ops.copy(v.value), trainable=False) for v in sources
    ]
    state = {"epoch": 0}

    def average():
        # One more epoch into an average of one: the general update path.
        state["epoch"] += 1
        swa._epochs, swa._averaged_epoch = 1, state["epoch"] - 1
        swa._average_epoch(state["epoch"])
        return swa._averages[-1].value

    def one_pass():
        # A real pass on every backend: JAX's `assign` alone only rebinds
        # an immutable array, so the copy is made explicit.
        for b, v in zip(buffers, sources):
            b.assign(ops.copy(v.value))
        return buffers[-1].value

    def elementwise_pass():
        # One elementwise op per weight: reads it once, writes a result.
        for b, v in zip(buffers, sources):
            b.assign(ops.multiply(v.value, 1.0))
        return buffers[-1].value

    times = interleaved(
        {"average": average, "copy": one_pass, "scale": elementwise_pass}
    )
    params = sum(int(np.prod(v.shape)) for v in sources)
    base = max(times["copy"], times["scale"])
    ratio = times["average"] / base
    rows = [
        [
            "epoch-end average update",
            f"{times['average'] * 1e3:.2f}",
            f"{ratio:.2f}x",
        ],
        [
            "one pass: `b.assign(ops.copy(w))` per weight",
            f"{times['copy'] * 1e3:.2f}",
            f"{times['copy'] / base:.2f}x",
        ],
        [
            "one pass: `b.assign(ops.multiply(w, 1.0))` per weight",
            f"{times['scale'] * 1e3:.2f}",
            f"{times['scale'] / base:.2f}x",
        ],
    ]
    return rows, params, ratio


def recalibration_rows():
    model = build(batch_norm=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, INPUT)).astype("float32")
    recalibration = BatchNormRecalibration(model)

    def recalibrate():
        recalibration.run(x, batch_size=BATCH)
        return model.layers[1].moving_mean.value

    def predict():
        return model.predict(x, batch_size=BATCH, verbose=0)

    times = interleaved(
        {"recalibrate": recalibrate, "predict": predict},
        warmup=2,
        rounds=5,
        per_round=2,
    )
    ratio = times["recalibrate"] / times["predict"]
    rows = [
        [
            "BN recalibration (one pass)",
            f"{times['recalibrate'] * 1e3:.1f}",
            f"{ratio:.2f}x",
        ],
        ["model.predict", f"{times['predict'] * 1e3:.1f}", "1.00x"],
    ]
    return rows, ratio


def main():
    avg_rows, params, avg_ratio = averaging_rows()
    bn_rows, bn_ratio = recalibration_rows()
    notes = [
        f"Averaging: MLP {INPUT}-" + "-".join([str(WIDTH)] * DEPTH) + "-10, "
        f"{params / 1e6:.1f}M float32 trainable parameters; median ms per "
        "call of interleaved rounds. The update is "
        "`_backend.running_mean_update` (torch: in-place `lerp_`; JAX: one "
        "jitted program for all variables; TensorFlow: one XLA function, "
        "eager ops under a strategy), on the weights' device. The baseline "
        "(1.00x) is the slower of the two one-pass rows: TensorFlow's "
        "`identity` copy may alias instead of copying.",
        f"Recalibration: the same MLP with a BatchNormalization after each "
        f"hidden Dense ({DEPTH} layers), {SAMPLES} samples of {INPUT} "
        f"features, batches of {BATCH}; both sides compiled "
        f"(jit_compile={BACKEND != 'torch'}).",
        f"Targets: averaging <= 1x one pass (measured {avg_ratio:.2f}x); "
        f"recalibration <= 1.2x predict (measured {bn_ratio:.2f}x).",
        "Timings on a shared 2-core CPU move by up to ~25% between runs; "
        "compare rows of one table only.",
    ]
    write_table(
        "swa",
        "Stochastic weight averaging: epoch-end update and BN recalibration",
        ["operation", "ms", "vs baseline"],
        avg_rows + bn_rows,
        notes,
    )


if __name__ == "__main__":
    main()
