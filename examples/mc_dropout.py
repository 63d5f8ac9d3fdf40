"""Exercise: Monte Carlo dropout, and which predictions to trust.

A network trained with ordinary `keras.layers.Dropout` is copied with
`kr.models.with_mc_dropout`, whose dropout layers keep sampling at inference
(the copy shares the trained weights). `kr.models.mc_predict` then runs many
stochastic passes per validation digit and returns the mean prediction, its
variance and two uncertainty scores: the predictive entropy (total
uncertainty) and the mutual information (the part due to the model).

Sorting digits by entropy and keeping only the most certain ones should
raise accuracy: the plot shows accuracy against the fraction kept, and the
digits the model is least sure of.

Run: `KERAS_BACKEND=jax python examples/mc_dropout.py` (`KR_SMOKE=1` for a
few-second check). Writes `example_outputs/mc_dropout.png`.
"""

import numpy as np
from _common import SMOKE
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp
from _common import out_path
from _common import pyplot

import keras_regularize as kr

SAMPLES = 5 if SMOKE else 50
SHOWN = 8


def accuracy_when_keeping(correct, score, fractions):
    """Accuracy on the `fraction` of inputs with the lowest `score`."""
    order = np.argsort(score, kind="stable")
    return np.array(
        [
            correct[order[: max(1, round(f * len(order)))]].mean()
            for f in fractions
        ]
    )


def main():
    x_train, y_train, x_val, y_val = digits()
    model = mlp(hidden=256, depth=2, dropout=0.3)
    model.compile("adam", SPARSE_CE, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs(40), batch_size=64, verbose=0)

    mc_model = kr.models.with_mc_dropout(model)
    pred = kr.models.mc_predict(
        mc_model, x_val, samples=SAMPLES, from_logits=True
    )
    label = pred.mean.argmax(axis=-1)
    correct = label == y_val
    plain = model.predict(x_val, verbose=0).argmax(axis=-1)
    # Spread of the sampled probability of the predicted class.
    spread = np.sqrt(pred.variance[np.arange(len(label)), label])

    fractions = np.linspace(0.05, 1.0, 20)
    by_entropy = accuracy_when_keeping(correct, pred.entropy, fractions)
    by_mi = accuracy_when_keeping(correct, pred.mutual_information, fractions)
    half = accuracy_when_keeping(correct, pred.entropy, [0.5])[0]
    worst = np.argsort(-pred.entropy, kind="stable")
    caught = np.isin(np.flatnonzero(~correct), worst[: len(worst) // 10])

    print(
        f"validation accuracy: plain predict {np.mean(plain == y_val):.3f}, "
        f"MC mean of {SAMPLES} samples {correct.mean():.3f}"
    )
    print(
        f"on the 50% most certain digits (lowest entropy) accuracy is "
        f"{half:.3f}, against {correct.mean():.3f} on all of them"
    )
    print(
        f"{caught.sum()} of the {(~correct).sum()} mistakes are among the 10% "
        f"most uncertain digits"
    )
    print(
        f"mean entropy {pred.entropy[correct].mean():.3f} nats when right, "
        f"{pred.entropy[~correct].mean():.3f} when wrong; predicted-class "
        f"probability std {spread[correct].mean():.3f} vs "
        f"{spread[~correct].mean():.3f}"
    )

    plt = pyplot()
    fig = plt.figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.15])
    ax = left.subplots()
    ax.plot(100 * fractions, by_entropy, marker="o", ms=3, label="entropy")
    ax.plot(
        100 * fractions, by_mi, marker="s", ms=3, label="mutual information"
    )
    ax.axhline(correct.mean(), color="k", linestyle=":", label="keep all")
    ax.set_xlabel("% of validation digits kept (most certain first)")
    ax.set_ylabel("accuracy on the kept digits")
    ax.set_title("Dropping uncertain digits raises accuracy", fontsize=10)
    ax.legend(fontsize=8)
    images = x_val.reshape(-1, 8, 8)
    axes = right.subplots(2, SHOWN // 2)
    for ax, i in zip(axes.ravel(), worst[:SHOWN]):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(
            f"true {y_val[i]}, said {label[i]}\nH={pred.entropy[i]:.2f}",
            fontsize=8,
            color="k" if correct[i] else "tab:red",
        )
        ax.axis("off")
    right.suptitle("The most uncertain digits (red: wrong)", fontsize=10)
    fig.savefig(out_path("mc_dropout.png"), dpi=110)
    print("wrote", out_path("mc_dropout.png"))


if __name__ == "__main__":
    main()
