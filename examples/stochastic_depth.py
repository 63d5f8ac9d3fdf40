"""Exercise: stochastic depth with linear-decay rates on a residual conv net."""

import keras
import numpy as np
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import out_path
from _common import pyplot

import keras_regularize as kr


def residual_convnet(max_rate, blocks=6, width=32, seed=0):
    keras.utils.set_random_seed(seed)
    rates = kr.layers.drop_path_rates(blocks, max_rate)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    for i, rate in enumerate(rates):
        block = keras.Sequential(
            [
                keras.layers.Conv2D(width, 3, padding="same"),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.Conv2D(width, 3, padding="same"),
            ],
            name=f"block_{i}",
        )
        # Dropped blocks are skipped for the whole batch: no compute.
        x = kr.layers.StochasticResidual(block, rate=rate, seed=i)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x)), rates


def main():
    x_train, y_train, x_val, y_val = digits()
    x_train = x_train.reshape(-1, 8, 8, 1)
    x_val = x_val.reshape(-1, 8, 8, 1)
    results = {}
    for max_rate in (0.0, 0.5):
        model, rates = residual_convnet(max_rate)
        model.compile("adam", SPARSE_CE, metrics=["accuracy"])
        h = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs(30),
            batch_size=64,
            verbose=0,
        ).history
        results[max_rate] = h
        print(
            f"max rate {max_rate}: rates {np.round(rates, 2).tolist()}, "
            f"train acc {h['accuracy'][-1]:.3f}, "
            f"val acc {h['val_accuracy'][-1]:.3f}"
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for max_rate, h in results.items():
        ax.plot(h["loss"], label=f"train, max rate {max_rate}")
        ax.plot(h["val_loss"], "--", label=f"val, max rate {max_rate}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path("stochastic_depth.png"), dpi=110)
    print("wrote", out_path("stochastic_depth.png"))


if __name__ == "__main__":
    main()
