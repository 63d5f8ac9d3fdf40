"""Exercise: EMA and SWA on an overfitting digits model, side by side.

One `fit` carries both averaging callbacks, so every epoch's logs hold the
raw model's validation loss and the two averaged models' (`val_ema_loss`,
`val_swa_loss`). The model (wide, no dropout, batch normalization, Adam)
overfits the 1,437 training digits within a few epochs; the averages
usually keep the validation loss lower than the raw weights do.
"""

import keras
from _common import SMOKE
from _common import SPARSE_CE
from _common import digits
from _common import epochs

from keras_regularize.callbacks.exponential_moving_average import (
    ExponentialMovingAverage,
)
from keras_regularize.callbacks.stochastic_weight_averaging import (
    StochasticWeightAveraging,
)


def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(512),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def main():
    x_train, y_train, x_val, y_val = digits()
    total = epochs(30)
    start = total // 2  # SWA averages the second half of the run
    net = model()
    net.compile(keras.optimizers.Adam(3e-3), SPARSE_CE, metrics=["accuracy"])
    ema = ExponentialMovingAverage(decay=0.99, final="raw")
    swa = StochasticWeightAveraging(
        start_epoch=start,
        swa_lr=1e-3,
        anneal_epochs=0 if SMOKE else 3,
        recalibration_data=x_train,
    )
    history = net.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=total,
        batch_size=64,
        callbacks=[ema, swa],
        verbose=0,
    ).history
    print("epoch  val_loss  val_ema_loss  val_swa_loss")
    swa_losses = history["val_swa_loss"]
    for epoch in range(total):
        swa_loss = epoch - start
        swa_text = (
            f"{swa_losses[swa_loss]:12.4f}" if swa_loss >= 0 else (f"{'-':>12}")
        )
        print(
            f"{epoch + 1:5d}  {history['val_loss'][epoch]:8.4f}  "
            f"{history['val_ema_loss'][epoch]:12.4f}  {swa_text}"
        )
    loss, accuracy = net.evaluate(x_val, y_val, verbose=0)
    print(
        f"after fit (SWA weights, batch norm recalibrated): val_loss "
        f"{loss:.4f}, val_accuracy {accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
