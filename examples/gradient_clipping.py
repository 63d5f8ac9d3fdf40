"""Exercise: monitor the gradient norm first, then clip at a few times it.

Step 1 trains with `GradientClipping(method="none")`, which only records the
pre-clip global norm, and `GradientNormLogger` puts it into the history.
Step 2 clips at 3x the typical (median) norm, as the chapter advises.
"""

import keras
import numpy as np
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp
from _common import out_path
from _common import pyplot

import keras_regularize as kr


def train(method, threshold=None):
    x_train, y_train, x_val, y_val = digits()
    model = mlp(hidden=512, depth=3, seed=0)
    optimizer = kr.optimizers.GradientClipping(
        keras.optimizers.SGD(0.05, momentum=0.9),
        method=method,
        threshold=threshold,
    )
    model.compile(optimizer, SPARSE_CE, metrics=["accuracy"])
    return model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs(25),
        batch_size=32,
        verbose=0,
        callbacks=[kr.callbacks.GradientNormLogger()],
    ).history


def main():
    watched = train("none")
    typical = float(np.median(watched["grad_norm"]))
    threshold = 3.0 * typical
    print(
        f"median epoch-mean gradient norm {typical:.3f}; "
        f"clipping at {threshold:.3f}"
    )
    clipped = train("global_norm", threshold)
    print(f"clip rate per epoch: {np.round(clipped['clip_rate'], 3)}")
    print(
        f"final val acc: unclipped {watched['val_accuracy'][-1]:.3f}, "
        f"clipped {clipped['val_accuracy'][-1]:.3f}"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(watched["grad_norm"], label="mean norm (monitor only)")
    ax.plot(watched["grad_norm_max"], ":", label="max norm (monitor only)")
    ax.plot(clipped["grad_norm"], label="mean pre-clip norm (clipped run)")
    ax.axhline(threshold, color="k", linestyle="--", label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("global gradient norm")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path("gradient_clipping.png"), dpi=110)
    print("wrote", out_path("gradient_clipping.png"))


if __name__ == "__main__":
    main()
