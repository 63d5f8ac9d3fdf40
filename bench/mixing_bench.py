"""Images per second: MixupLayer/CutMixLayer vs Keras, timm and torchvision.

Run with `KERAS_BACKEND=<b> PYTHONPATH=$PWD python bench/mixing_bench.py`.
The issue's batch is (128, 224, 224, 3) float32 with 1,000 classes;
`KR_MIX_BATCH=32` (or the smoke run) measures a smaller batch. Compiled
where the backend allows it: `tf.function(jit_compile=True)` on TensorFlow
(Keras's layers cannot compile under XLA there, so they run in a plain
`tf.function`), `jax.jit` over `Layer.stateless_call` on JAX, eager on torch.
"""

import os

import keras
import numpy as np

import keras_regularize
from bench._harness import BACKEND
from bench._harness import SMOKE
from bench._harness import load_module_file
from bench._harness import timeit
from bench._harness import write_table

CLASSES = 1000
BATCH = 4 if SMOKE else int(os.environ.get("KR_MIX_BATCH", "128"))
SIZE = 32 if SMOKE else 224
RUNS = 10


def compiled(layer, xla=True, x_small=None, y_small=None):
    """`f(images, labels) -> (images, labels)` as fast as the backend allows."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=xla)
        def step(x, y):
            out = layer({"images": x, "labels": y}, training=True)
            return out["images"], out["labels"]

        return step, ("XLA" if xla else "tf.function")
    if BACKEND == "jax":
        import jax

        if not layer.built:  # Keras's layers build on their first call
            layer({"images": x_small, "labels": y_small}, training=True)
        state = {"vars": [v.value for v in layer.non_trainable_variables]}

        @jax.jit
        def pure(variables, x, y):
            out, variables = layer.stateless_call(
                [], variables, {"images": x, "labels": y}, training=True
            )
            return (out["images"], out["labels"]), variables

        def step(x, y):
            out, state["vars"] = pure(state["vars"], x, y)
            return out

        return step, "jax.jit"

    def step(x, y):
        out = layer({"images": x, "labels": y}, training=True)
        return out["images"], out["labels"]

    return step, "eager"


def timm_mixup_class():
    """timm's `Mixup`, loaded from its own file if `import timm` fails.

    `timm.data.mixup` needs only numpy and torch, but `import timm.data`
    pulls in torchvision, whose wheel may not load against the local torch
    build; loading the one module file times the same code.
    """
    try:
        from timm.data import Mixup

        return Mixup
    except Exception:  # noqa: BLE001 - fall back to the module file
        return load_module_file(
            "timm", os.path.join("data", "mixup.py"), "timm_data_mixup"
        ).Mixup


def main():
    rng = np.random.default_rng(0)
    x_np = rng.random((BATCH, SIZE, SIZE, 3), dtype=np.float32)
    ids = rng.integers(0, CLASSES, BATCH)
    y_np = np.eye(CLASSES, dtype="float32")[ids]
    x = keras.ops.convert_to_tensor(x_np)
    y = keras.ops.convert_to_tensor(y_np)
    lam = keras.ops.convert_to_tensor(0.7)
    flip = keras.ops.arange(BATCH - 1, -1, -1)

    def blend():
        x2 = keras.ops.take(x, flip, axis=0)
        return x * lam + x2 * (1.0 - lam)

    if BACKEND == "jax":
        import jax

        blend_fn = jax.jit(blend)
    else:
        blend_fn = blend

    candidates = [("plain keras.ops blend (floor)", blend_fn, "")]
    pairs = [
        (
            "keras_regularize MixupLayer",
            keras_regularize.layers.MixupLayer(alpha=0.2, seed=0),
        ),
        ("keras.layers.MixUp", keras.layers.MixUp(alpha=0.2, seed=0)),
        (
            "keras_regularize CutMixLayer",
            keras_regularize.layers.CutMixLayer(alpha=1.0, seed=0),
        ),
        ("keras.layers.CutMix", keras.layers.CutMix(seed=0)),
        (
            "keras_regularize RandomMix",
            keras_regularize.layers.RandomMix(seed=0),
        ),
    ]
    for name, layer in pairs:
        xla = not name.startswith("keras.layers")
        step, how = compiled(layer, xla, x[:2], y[:2])
        candidates.append((name, lambda s=step: s(x, y), how))

    # Our layers taking integer ids (one-hot inside), Keras cannot.
    step, how = compiled(
        keras_regularize.layers.MixupLayer(num_classes=CLASSES, seed=0)
    )
    # (The layer is built at construction, so no sample batch is needed.)
    y_ids = keras.ops.convert_to_tensor(ids.astype("int32"))
    candidates.append(
        ("keras_regularize MixupLayer, int labels", lambda: step(x, y_ids), how)
    )

    notes = []
    if BACKEND == "torch":
        import torch

        xt = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
        yt = torch.from_numpy(ids)
        try:
            Mixup = timm_mixup_class()

            timm_mix = Mixup(
                mixup_alpha=0.2, cutmix_alpha=0.0, num_classes=1000
            )
            timm_cut = Mixup(
                mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=1000
            )
            batch_ok = BATCH % 2 == 0
            if batch_ok:
                # timm mixes in place: time it on a fresh copy each call and
                # count the copy (timm users hand it a fresh batch).
                candidates.append(
                    (
                        "timm Mixup (mixup, NCHW, in place)",
                        lambda: timm_mix(xt.clone(), yt),
                        "eager",
                    )
                )
                candidates.append(
                    (
                        "timm Mixup (cutmix, NCHW, in place)",
                        lambda: timm_cut(xt.clone(), yt),
                        "eager",
                    )
                )
            notes.append(
                "timm Mixup works on NCHW tensors in place; timed on a fresh "
                "clone per call, which adds one copy."
            )
        except Exception as error:  # noqa: BLE001 - an import may crash
            notes.append(
                f"timm unavailable: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:100]}"
            )
        try:
            from torchvision.transforms import v2

            tv_mix = v2.MixUp(alpha=0.2, num_classes=CLASSES)
            tv_cut = v2.CutMix(alpha=1.0, num_classes=CLASSES)
            candidates.append(
                ("torchvision v2 MixUp (NCHW)", lambda: tv_mix(xt, yt), "eager")
            )
            candidates.append(
                (
                    "torchvision v2 CutMix (NCHW)",
                    lambda: tv_cut(xt, yt),
                    "eager",
                )
            )
        except Exception as error:  # noqa: BLE001 - an import may crash
            notes.append(
                f"torchvision unavailable: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:100]}"
            )

    rows = []
    base = None
    for name, fn, how in candidates:
        try:
            seconds = timeit(fn, runs=RUNS)
        except Exception as error:  # noqa: BLE001 - report, keep going
            rows.append(
                (
                    name,
                    how,
                    "failed",
                    "",
                    type(error).__name__
                    + ": "
                    + str(error).splitlines()[0][:80],
                )
            )
            continue
        if base is None:
            base = seconds
        rows.append(
            (
                name,
                how,
                f"{seconds * 1e3:.1f}",
                f"{BATCH / seconds:,.0f}",
                f"{seconds / base:.2f}x",
            )
        )
    mb = BATCH * SIZE * SIZE * 3 * 4 / 1e6
    notes = [
        f"Batch ({BATCH}, {SIZE}, {SIZE}, 3) float32 ({mb:.0f} MB), "
        f"{CLASSES} classes, one-hot float labels unless stated; "
        f"median of {RUNS} runs after 3 warm-up calls.",
        "Ratios are to the plain `keras.ops` blend of the batch with its "
        "reverse (lower is faster); images/s = batch / median time.",
        "Keras MixUp/CutMix cannot compile under TensorFlow XLA (no kernel "
        "for StatelessRandomGammaV3), so on TensorFlow they run in a plain "
        "tf.function while keras_regularize runs under XLA.",
        "Shared 2-core CPU: timings move by ~25% between runs; compare "
        "ratios within one table.",
    ] + notes
    if BATCH != 128:
        notes.insert(
            0,
            f"Reduced from the issue's batch of 128 to {BATCH} for this "
            "2-core CPU machine.",
        )
    write_table(
        "mixing",
        "Mixing a batch: images per second",
        ["candidate", "mode", "ms / batch", "images / s", "vs blend"],
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
