"""Exercise: the same network with dropout rates 0, 0.25, 0.5 and 0.75."""

from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp
from _common import out_path
from _common import pyplot


def main():
    x_train, y_train, x_val, y_val = digits()
    rates = [0.0, 0.25, 0.5, 0.75]
    histories = {}
    for rate in rates:
        model = mlp(hidden=512, depth=2, dropout=rate)
        model.compile("adam", SPARSE_CE, metrics=["accuracy"])
        h = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs(40),
            batch_size=64,
            verbose=0,
        ).history
        histories[rate] = h
        print(
            f"dropout {rate:.2f}: train acc {h['accuracy'][-1]:.3f}, "
            f"val acc {h['val_accuracy'][-1]:.3f}, "
            f"best val acc {max(h['val_accuracy']):.3f}"
        )
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for rate, h in histories.items():
        axes[0].plot(h["accuracy"], label=f"p={rate}")
        axes[1].plot(h["val_accuracy"], label=f"p={rate}")
    axes[0].set_title("training accuracy")
    axes[1].set_title("validation accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path("dropout_ablation.png"), dpi=110)
    print("wrote", out_path("dropout_ablation.png"))


if __name__ == "__main__":
    main()
