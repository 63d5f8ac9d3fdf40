"""Cost of retrofitted stochastic depth on keras.applications ResNet50.

Times one `train_on_batch` step of `ResNet50(weights=None)` on 64x64 inputs,
batch 32:

1. the original model against `add_regularization(drop_path=0.1)` (16
   `DropPath` layers on the residual branches; target <= 1.03x);
2. `add_regularization(drop_path=0.5, drop_path_mode="skip")` against
   `drop_path_mode="row"` at the same rates (mean rate 0.25 over 16
   merges; the 12 identity branches are skipped when dropped, so the bound
   on the residual branches is 1 / 0.75 = 1.33x).

`KR_BENCH_SMOKE=1` runs 32x32 inputs, batch 8, one round.
"""

import os
import sys
import warnings

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import _harness  # noqa: E402

from keras_regularize.models._retrofit import add_regularization  # noqa: E402

BACKEND = _harness.BACKEND
SMOKE = _harness.SMOKE
JIT = BACKEND != "torch"  # torch.compile cannot trace the keep/skip choice
SIZE, BATCH = (32, 8) if SMOKE else (64, 32)


def resnet50():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.applications.ResNet50(
            weights=None, input_shape=(SIZE, SIZE, 3), classes=10
        )


def compiled(model):
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(),
        jit_compile=JIT,
    )
    return model


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH,))
    base = resnet50()
    # Each candidate gets its own layers (a fresh ResNet50 with the same
    # weights), so that no two compiled steps share variables.
    models = {"original": base}
    for name, kwargs in {
        "drop_path=0.1 (row)": dict(drop_path=0.1),
        "drop_path=0.5 (row)": dict(drop_path=0.5),
        "drop_path=0.5 (skip)": dict(drop_path=0.5, drop_path_mode="skip"),
    }.items():
        copy = resnet50()
        copy.set_weights(base.get_weights())
        models[name], report = add_regularization(copy, seed=0, **kwargs)
        print(name, f"{len(report.merges)} merges,", report.fallbacks, "row")
    steps = {}
    for name, model in models.items():
        compiled(model).train_on_batch(x, y)
        steps[name] = lambda m=model: m.train_on_batch(x, y)
    # The skip mode's cost varies with its draws: several steps per timing.
    times = _harness.interleaved(steps, warmup=1, rounds=3, per_round=2)
    rows = []
    for name, t in times.items():
        ref = "original" if "0.1" in name else "drop_path=0.5 (row)"
        if name in ("original", ref):
            ref, ratio = "-", "-"
        else:
            ratio = f"{t / times[ref]:.3f}x"
        rows.append([name, f"{t * 1e3:.0f}", ref, ratio])
    _harness.write_table(
        "add_regularization",
        f"ResNet50 train step, {SIZE}x{SIZE}, batch {BATCH}: retrofitted "
        "drop path",
        ["model", "ms / step", "compared with", "time ratio"],
        rows,
        notes=[
            f"One `train_on_batch` step, jit_compile={JIT}; median of 6 "
            "steps per model, timed in 3 interleaved rounds after one "
            "warm-up step, in one process. A 2-core CPU shared with other "
            "jobs (loaded while measured): read the ratios, not the times.",
            "Target: drop_path=0.1 <= 1.03x the original.",
            "skip vs row at drop_path=0.5: a ratio below 1 is the speed-up; "
            "the bound on the residual branches is 1.33x (mean rate 0.25), "
            "less on the whole step (stem, shortcuts, head and the 4 "
            "projection merges, which stay in row mode).",
        ],
    )


if __name__ == "__main__":
    main()
