"""DropBlock2D: dropped fraction and coverage statistics, and step time.

Part 1 calls each layer in training mode on all-ones feature maps, square
(32x32) and non-square (40x8), and reports the mean fraction of zeroed
units against the requested rate, and the fraction of map rows that were
ever dropped over the calls (a layer that cannot reach some rows leaves
them always active). Part 2 times one compiled training step of a small
conv net with the layer against the same net without it. keras-cv's
DropBlock2D is the side-by-side anchor where it is installed (TensorFlow).
"""

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _harness  # noqa: E402

from keras_regularize import layers  # noqa: E402

BACKEND = _harness.BACKEND
RATE = 0.3
CALLS = 3 if _harness.SMOKE else 40


def _candidates(block_size):
    out = {
        "DropBlock2D (ours)": lambda: layers.DropBlock2D(
            RATE, block_size, data_format="channels_last", seed=0
        )
    }
    if BACKEND == "tensorflow":
        try:
            import keras_cv

            out["keras-cv DropBlock2D"] = lambda: keras_cv.layers.DropBlock2D(
                RATE, block_size, seed=0
            )
        except Exception as e:  # noqa: BLE001 - optional anchor
            print("keras-cv not available:", e)
    return out


def drop_statistics():
    rows = []
    for height, width, block in ((32, 32, 7), (40, 8, 5)):
        x = np.ones((16, height, width, 8), "float32")
        for name, make in _candidates(block).items():
            layer = make()
            dropped, rows_hit = [], np.zeros(height, bool)
            for _ in range(CALLS):
                y = keras.ops.convert_to_numpy(layer(x, training=True))
                zero = y == 0.0
                dropped.append(zero.mean())
                rows_hit |= zero.any(axis=(0, 2, 3))
            rows.append(
                [
                    f"{height}x{width}, block {block}",
                    name,
                    f"{np.mean(dropped):.3f}",
                    f"{RATE:.3f}",
                    f"{rows_hit.mean():.2f}",
                ]
            )
    return rows


def step_times():
    shape = (8, 16, 16, 8) if _harness.SMOKE else (64, 32, 32, 32)
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    y = rng.integers(0, 10, size=(shape[0],))
    candidates = {"no DropBlock": None, **_candidates(5)}
    steps = {}
    for name, make in candidates.items():
        inputs = keras.Input(shape[1:])
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(
            inputs
        )
        if make is not None:
            h = make()(h)
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        model.compile(
            "sgd",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=BACKEND != "torch",
        )
        try:
            model.train_on_batch(x, y)
            steps[name] = lambda m=model: m.train_on_batch(x, y)
        except Exception as e:  # noqa: BLE001 - report, don't hide
            print(f"{name} failed: {type(e).__name__}: {str(e)[:200]}")
    times = _harness.interleaved(steps)
    base = times["no DropBlock"]
    return [
        [name, f"{t * 1e3:.1f}", f"{t / base:.2f}x"]
        for name, t in times.items()
    ]


def main():
    _harness.write_table(
        "drop_block_stats",
        f"DropBlock2D at rate {RATE}: dropped fraction and row coverage",
        ["map", "layer", "dropped", "requested", "rows ever dropped"],
        drop_statistics(),
        notes=[
            f"All-ones (16, H, W, 8) inputs, {CALLS} training calls each; "
            "`dropped` is the mean fraction of zeroed units.",
            "Ours uses the paper's gamma, which counts only block centres "
            "that fit inside the map, so on small maps the dropped fraction "
            "undershoots the rate (overlapping blocks).",
        ],
    )
    _harness.write_table(
        "drop_block_step",
        "DropBlock2D train step vs the same conv net without it",
        ["model", "ms / step", "vs none"],
        step_times(),
        notes=[
            "Conv(32)-DropBlock2D(0.3, 5)-Conv(32)-GAP-Dense(10) on "
            "(64, 32, 32, 32) inputs, SGD, jit_compile on jax/tensorflow; "
            "median of interleaved rounds in one process.",
        ],
    )


if __name__ == "__main__":
    main()
