"""Exercise: decoupled weight decay (AdamW) from 0 to 1e-1."""

import keras
from _common import SMOKE
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp
from _common import out_path
from _common import pyplot


def main():
    x_train, y_train, x_val, y_val = digits()
    decays = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    if SMOKE:
        decays = [0.0, 1e-1]
    results = []
    for wd in decays:
        model = mlp(hidden=512, depth=2)
        model.compile(
            keras.optimizers.AdamW(1e-3, weight_decay=wd),
            SPARSE_CE,
            metrics=["accuracy"],
        )
        h = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs(40),
            batch_size=64,
            verbose=0,
        ).history
        results.append((wd, h["val_accuracy"][-1], h["accuracy"][-1]))
        print(
            f"weight decay {wd:g}: val acc {results[-1][1]:.3f}, "
            f"train acc {results[-1][2]:.3f}"
        )
    best = max(results, key=lambda r: r[1])
    print(f"best weight decay here: {best[0]:g} (val acc {best[1]:.3f})")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    labels = [f"{wd:g}" for wd, _, _ in results]
    ax.plot(labels, [r[1] for r in results], "o-", label="validation")
    ax.plot(labels, [r[2] for r in results], "s--", label="training")
    ax.set_xlabel("AdamW weight_decay")
    ax.set_ylabel("final accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path("weight_decay_sweep.png"), dpi=110)
    print("wrote", out_path("weight_decay_sweep.png"))


if __name__ == "__main__":
    main()
