"""Exercise: early stopping curves, with the restored epoch marked."""

from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp
from _common import out_path
from _common import pyplot

import keras_regularize as kr


def main():
    x_train, y_train, x_val, y_val = digits()
    model = mlp(hidden=1024, depth=3)
    model.compile("adam", SPARSE_CE, metrics=["accuracy"])
    stopper = kr.callbacks.EarlyStoppingRestore(
        monitor="val_loss", patience=8, min_delta=1e-4
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs(100),
        batch_size=64,
        verbose=0,
        callbacks=[stopper],
    ).history
    best = stopper.best_epoch
    print(
        f"stopped: {stopper.stop_reason}; best epoch {best + 1} "
        f"(val_loss {stopper.best:.4f}); weights restored: "
        f"{stopper.restored}"
    )
    _, val_acc = model.evaluate(x_val, y_val, verbose=0)
    print(f"validation accuracy with the restored weights: {val_acc:.3f}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(
        range(1, len(history["loss"]) + 1), history["loss"], label="train loss"
    )
    ax.plot(
        range(1, len(history["val_loss"]) + 1),
        history["val_loss"],
        label="validation loss",
    )
    ax.axvline(
        best + 1, color="k", linestyle=":", label=f"restored epoch {best + 1}"
    )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path("early_stopping.png"), dpi=110)
    print("wrote", out_path("early_stopping.png"))


if __name__ == "__main__":
    main()
