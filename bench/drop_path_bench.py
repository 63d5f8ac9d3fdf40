"""Stochastic depth speed: DropPath vs a plain residual add, and skipped blocks.

Part 1 times one compiled training step (forward + backward) of
`x + DropPath(s * r)` against `x + s * r` at rate 0.1, side by side with
Keras's `Dropout(noise_shape=(B, 1, ...))`, keras-cv's DropPath (TensorFlow,
where installed), and timm/torchvision's drop path (torch, where installed).

Part 2 trains a 12-block residual MLP with `drop_path_rates(12, 0.5)`
(mean rate 0.25, so skipping dropped blocks can at best make a step
1 / 0.75 = 1.33x faster) and compares `StochasticResidual(mode="batch")`,
which skips dropped blocks, and `mode="subset"` with multiply-based DropPath.
"""

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import _harness  # noqa: E402

from keras_regularize import layers  # noqa: E402

BACKEND = _harness.BACKEND
JIT = BACKEND != "torch"  # torch.compile cannot trace the keep/skip choice
SMOKE = _harness.SMOKE


class Scale(keras.layers.Layer):
    """One trainable scalar, so the step has a gradient to compute."""

    def build(self, input_shape):
        self.s = self.add_weight(shape=(), initializer="ones")

    def call(self, x):
        return x * self.s


def _timm_drop_path_class():
    """timm's `DropPath`, from its module file if `timm` cannot import.

    `import timm` pulls in torchvision, whose wheel here does not match the
    CPU build of torch (`torchvision::nms does not exist`); `timm/layers/
    drop.py` itself needs only torch, so loading that one file times the
    same code.
    """
    try:
        import timm.layers

        return timm.layers.DropPath
    except Exception:  # noqa: BLE001 - fall back to the module file
        return _harness.load_module_file(
            "timm", os.path.join("layers", "drop.py"), "timm_layers_drop"
        ).DropPath


def _anchor_drop_paths():
    out = {}
    if BACKEND == "tensorflow":
        try:
            import keras_cv

            out["keras-cv DropPath"] = lambda: keras_cv.layers.DropPath(0.1)
        except Exception as e:  # noqa: BLE001 - optional anchor
            print("keras-cv not available:", e)
    if BACKEND == "torch":
        try:
            timm_drop_path = _timm_drop_path_class()

            class TimmDropPath(keras.layers.Layer):
                def __init__(self):
                    super().__init__()
                    self.inner = timm_drop_path(0.1)

                def call(self, x, training=False):
                    self.inner.train(bool(training))
                    return self.inner(x)

            out["timm DropPath (wrapped)"] = TimmDropPath
        except Exception as e:  # noqa: BLE001
            print("timm not available:", e)
        try:
            import torchvision.ops

            class TVStochasticDepth(keras.layers.Layer):
                def call(self, x, training=False):
                    return torchvision.ops.stochastic_depth(
                        x, 0.1, "row", training=bool(training)
                    )

            out["torchvision stochastic_depth"] = TVStochasticDepth
        except Exception as e:  # noqa: BLE001
            print("torchvision not available:", e)
    return out


def residual_step_times(shape):
    rows = []
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    y = np.zeros((shape[0], 1), "float32")
    candidates = {
        "plain x + r": None,
        "DropPath (ours)": lambda: layers.DropPath(0.1, seed=0),
        "keras Dropout(noise_shape=(B,1,..))": lambda: keras.layers.Dropout(
            0.1, noise_shape=(shape[0],) + (1,) * (len(shape) - 1)
        ),
        **_anchor_drop_paths(),
    }
    steps, failed = {}, []
    for name, make in candidates.items():
        inputs = keras.Input(shape[1:], batch_size=shape[0])
        branch = Scale()(inputs)
        if make is not None:
            branch = make()(branch)
        out = keras.layers.Add()([inputs, branch])
        out = keras.layers.GlobalAveragePooling1D()(
            keras.layers.Reshape((-1, shape[-1]))(out)
        )
        out = keras.layers.Dense(1)(out)
        model = keras.Model(inputs, out)
        try:
            model.compile("sgd", "mse", jit_compile=JIT)
            model.train_on_batch(x, y)
            steps[name] = lambda m=model: m.train_on_batch(x, y)
        except Exception as e:  # noqa: BLE001 - report, don't hide
            failed.append(name)
            print(f"{name} failed: {type(e).__name__}: {str(e)[:200]}")
    times = _harness.interleaved(steps)
    times.update({name: None for name in failed})
    base = times["plain x + r"]
    for name, t in times.items():
        ratio = "failed" if t is None else f"{t / base:.2f}x"
        ms = "-" if t is None else f"{t * 1e3:.1f}"
        rows.append([str(shape), name, ms, ratio])
    return rows


def residual_mlp(kind, width, depth=12, max_rate=0.5):
    rates = layers.drop_path_rates(depth, max_rate)
    inputs = keras.Input((width,))
    x = inputs
    for i, rate in enumerate(rates):
        block = keras.Sequential(
            [
                keras.layers.Dense(width * 4, activation="gelu"),
                keras.layers.Dense(width),
            ]
        )
        if kind == "DropPath (row, multiply)":
            x = keras.layers.Add()([x, layers.DropPath(rate, seed=i)(block(x))])
        elif kind == "plain (no drop)":
            x = keras.layers.Add()([x, block(x)])
        else:
            mode = "batch" if "batch" in kind else "subset"
            x = layers.StochasticResidual(block, rate, mode=mode, seed=i)(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )
    return model


def depth_step_times():
    width, batch = (64, 32) if SMOKE else (384, 256)
    steps = 2 if SMOKE else 10
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, width)).astype("float32")
    y = rng.integers(0, 10, size=(batch,))
    kinds = [
        "plain (no drop)",
        "DropPath (row, multiply)",
        "StochasticResidual batch",
        "StochasticResidual subset",
    ]
    runs = {}
    for kind in kinds:
        model = residual_mlp(kind, width)

        def run(model=model):
            for _ in range(steps):
                out = model.train_on_batch(x, y)
            return out

        runs[kind] = run
    # Mean step time over many random keep/skip draws.
    times = {
        k: t / steps
        for k, t in _harness.interleaved(
            runs, warmup=2, rounds=5, per_round=2
        ).items()
    }
    base = times["DropPath (row, multiply)"]
    return [
        [kind, f"{t * 1e3:.1f}", f"{base / t:.2f}x"]
        for kind, t in times.items()
    ]


def main():
    shapes = (
        [(8, 197, 384), (8, 56, 56, 96)]
        if SMOKE
        else [(64, 197, 384), (64, 56, 56, 96)]
    )
    rows = []
    for shape in shapes:
        rows += residual_step_times(shape)
    _harness.write_table(
        "drop_path",
        "DropPath train step vs a plain residual add",
        ["input", "candidate", "ms / step", "vs plain"],
        rows,
        notes=[
            f"One `train_on_batch` step, jit_compile={JIT}, rate 0.1; "
            "median of 21 steps per candidate, timed in 7 interleaved "
            "rounds after warm-up, in one process; the ratio is what "
            "matters.",
            "Target: DropPath <= 1.10x the plain residual add.",
        ],
    )
    _harness.write_table(
        "stochastic_residual",
        "12-block residual MLP, drop_path_rates(12, 0.5): step time",
        ["model", "ms / step", "speed-up vs DropPath"],
        depth_step_times(),
        notes=[
            "Mean rate 0.25: skipping dropped blocks is at most 1.33x faster.",
            f"jit_compile={JIT}; Adam; width 384 (blocks 384-1536-384), "
            "batch 256; mean step time over 10 steps, median of 10 "
            "repeats timed in 5 interleaved rounds.",
            "Target: StochasticResidual >= 1.25x faster than DropPath.",
        ],
    )


if __name__ == "__main__":
    main()
