"""Exercise: MixUp and CutMix, what they feed the network and what they do.

MixUp replaces an image by `lam * x_i + (1 - lam) * x_j` and its one-hot
label by the same blend, with `lam ~ Beta(alpha, alpha)`. CutMix pastes a
box of `x_j` into `x_i` and weights the labels by the area each image keeps.
Either way the network is trained on soft targets between two classes.

Part 1 calls `kr.layers.MixupLayer` and `kr.layers.CutMixLayer` on a batch
of digits, as `layer((images, labels), training=True)`, and draws the mixed
images with their soft labels. Part 2 trains the same small conv net three
times: plainly, and wrapped in `kr.models.MixingModel`, which mixes each
batch on the device inside `fit` (integer labels, ordinary loss) and leaves
`evaluate`/`predict` unmixed. The plot shows the validation curves.

Run: `KERAS_BACKEND=jax python examples/mixup_cutmix.py` (`KR_SMOKE=1` for a
few-second check). Writes `example_outputs/mixup_cutmix.png`.
"""

import keras
import numpy as np
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import out_path
from _common import pyplot
from keras import ops

import keras_regularize as kr

SHOWN = (0, 1, 3, 4, 6, 7, 8, 9)


def mixers():
    # One lambda (and one box) per sample, so every image differs. With
    # alpha < 1 most lambdas lie near 0 or 1: mostly one digit, a little of
    # another.
    return {
        "MixUp α=0.4": kr.layers.MixupLayer(
            alpha=0.4, num_classes=10, mode="elem", seed=1
        ),
        "CutMix α=1": kr.layers.CutMixLayer(
            alpha=1.0, num_classes=10, mode="elem", seed=2
        ),
    }


def convnet(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def soft_label_text(row):
    """'0.62·3 + 0.38·8' for the (at most two) classes with weight."""
    top = [c for c in np.argsort(-row)[:2] if row[c] > 0.005]
    return " + ".join(f"{row[c]:.2f}·{c}" for c in top)


def train(x_train, y_train, x_val, y_val, mixer):
    network = convnet()
    model = network if mixer is None else kr.models.MixingModel(network, mixer)
    model.compile("adam", SPARSE_CE, metrics=["accuracy"])
    return model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs(60),
        batch_size=64,
        verbose=0,
    ).history


def main():
    x_train, y_train, x_val, y_val = digits()
    x_train = x_train.reshape(-1, 8, 8, 1)
    x_val = x_val.reshape(-1, 8, 8, 1)

    # Part 1: one batch of digits of different classes, mixed two ways.
    index = [int(np.flatnonzero(y_val == c)[0]) for c in SHOWN]
    batch = (x_val[index], y_val[index])
    rows = {"original": (batch[0], np.eye(10)[batch[1]])}
    for name, layer in mixers().items():
        images, labels = layer(batch, training=True)
        rows[name] = (
            ops.convert_to_numpy(images),
            ops.convert_to_numpy(labels),
        )

    # Part 2: the same network trained without mixing, with MixUp, CutMix.
    histories = {"no mixing": train(x_train, y_train, x_val, y_val, None)}
    for name, layer in mixers().items():
        histories[name] = train(x_train, y_train, x_val, y_val, layer)
    for name, h in histories.items():
        print(
            f"{name:12s} final val acc {h['val_accuracy'][-1]:.3f} "
            f"(best {max(h['val_accuracy']):.3f}), final val loss "
            f"{h['val_loss'][-1]:.3f} (best {min(h['val_loss']):.3f}), "
            f"train acc {h['accuracy'][-1]:.3f}"
        )
    print(
        "(MixingModel scores its training accuracy on the mixed inputs "
        "against the original labels, so it stays well below 1)"
    )

    plt = pyplot()
    fig = plt.figure(figsize=(11, 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    grid = top.subplots(len(rows), len(SHOWN))
    for r, (name, (images, labels)) in enumerate(rows.items()):
        for c in range(len(SHOWN)):
            ax = grid[r, c]
            ax.imshow(images[c, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(soft_label_text(labels[c]), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        grid[r, 0].set_ylabel(name, fontsize=8)
    top.suptitle("Mixed digits and their soft labels", fontsize=10)
    acc_ax, loss_ax = bottom.subplots(1, 2)
    for name, h in histories.items():
        acc_ax.plot(range(1, len(h["val_accuracy"]) + 1), h["val_accuracy"])
        loss_ax.plot(
            range(1, len(h["val_loss"]) + 1), h["val_loss"], label=name
        )
    acc_ax.set_ylabel("validation accuracy")
    loss_ax.set_ylabel("validation loss")
    loss_ax.set_yscale("log")
    loss_ax.legend(fontsize=8)
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
    fig.savefig(out_path("mixup_cutmix.png"), dpi=110)
    print("wrote", out_path("mixup_cutmix.png"))


if __name__ == "__main__":
    main()
