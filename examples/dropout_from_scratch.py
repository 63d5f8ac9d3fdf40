"""Exercise: dropout from scratch, standard and inverted, vs the Keras layer.

Standard dropout zeroes units with probability p in training and multiplies
every activation by (1 - p) at test time; inverted dropout divides the kept
units by (1 - p) in training and does nothing at test time. Both keep the
expected activation equal between training and test; inverted dropout is
what `keras.layers.Dropout` does, so inference needs no change.
"""

import keras
import numpy as np
from _common import out_path
from _common import pyplot
from keras import ops


def standard_dropout(x, p, training, seed):
    if not training:
        return x * (1.0 - p)
    keep = keras.random.uniform(ops.shape(x), seed=seed) >= p
    return ops.where(keep, x, 0.0)


def inverted_dropout(x, p, training, seed):
    if not training:
        return x
    keep = keras.random.uniform(ops.shape(x), seed=seed) >= p
    return ops.where(keep, x / (1.0 - p), 0.0)


def main():
    p, n = 0.4, 200_000
    x = np.random.default_rng(0).uniform(0.5, 1.5, (n,)).astype("float32")
    seed = keras.random.SeedGenerator(0)
    ours_std = ops.convert_to_numpy(standard_dropout(x, p, True, seed))
    ours_inv = ops.convert_to_numpy(inverted_dropout(x, p, True, seed))
    layer = keras.layers.Dropout(p, seed=1)
    keras_out = ops.convert_to_numpy(layer(x, training=True))
    test_std = ops.convert_to_numpy(standard_dropout(x, p, False, seed))

    rows = {
        "standard (train)": ours_std,
        "inverted (train)": ours_inv,
        "keras Dropout (train)": keras_out,
    }
    print(f"input mean {x.mean():.4f}; p = {p}")
    for name, y in rows.items():
        print(
            f"{name:24s} zero fraction {np.mean(y == 0):.4f}  "
            f"mean {y.mean():.4f}"
        )
    print(f"{'standard (test, x(1-p))':24s} mean {test_std.mean():.4f}")
    # Inverted dropout and the Keras layer agree in distribution: the same
    # zero fraction and the same kept values x / (1 - p).
    assert abs(np.mean(ours_inv == 0) - np.mean(keras_out == 0)) < 0.01
    kept = keras_out != 0
    np.testing.assert_allclose(keras_out[kept], x[kept] / (1 - p), rtol=1e-6)
    # Standard dropout's training mean matches its (1 - p)-scaled test mean.
    assert abs(ours_std.mean() - test_std.mean()) < 0.01

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, y in rows.items():
        ax.hist(y[y > 0], bins=60, histtype="step", label=name)
    ax.set_xlabel("kept activation value")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(f"Dropout p={p}: kept values (zeros not shown)")
    fig.tight_layout()
    fig.savefig(out_path("dropout_from_scratch.png"), dpi=110)
    print("wrote", out_path("dropout_from_scratch.png"))


if __name__ == "__main__":
    main()
