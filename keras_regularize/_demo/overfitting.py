"""`keras-regularize demo`: each regularizer against an overfitting baseline."""

import os
import time

import keras
import numpy as np

from keras_regularize._demo import data
from keras_regularize._demo import report
from keras_regularize._demo import techniques as tech

COLUMNS = [
    "technique",
    "train acc",
    "val acc",
    "gap",
    "val loss",
    "best epoch",
    "units at cap",
    "seconds",
]
# A quarter of the digits for training: small enough that the network
# memorises it (train loss near 0) while validation loss stalls.
VAL_FRACTION = 0.75


class EpochBar(keras.callbacks.Callback):
    """One Keras progress bar per run, advanced once per epoch."""

    def __init__(self, title, epochs):
        super().__init__()
        self.title = title
        self.epochs = epochs

    def on_train_begin(self, logs=None):
        print(self.title)
        self.bar = keras.utils.Progbar(
            self.epochs,
            stateful_metrics=["loss", "val_accuracy"],
            unit_name="epoch",
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = [(k, logs[k]) for k in ("loss", "val_accuracy") if k in logs]
        self.bar.update(epoch + 1, values=values)

    def on_train_end(self, logs=None):
        # Early stopping ends before the bar's target: close the line.
        if self.bar._seen_so_far < self.epochs:
            print()


def accuracy(network, x, y):
    logits = network.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def cross_entropy(network, x, y):
    """Mean sparse cross-entropy of the network's logits on `(x, y)`."""
    logits = network.predict(x, batch_size=512, verbose=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return float(keras.ops.convert_to_numpy(loss(y, logits)))


def fit_with_bar(model, title, epochs, split, callbacks=(), batch_size=64):
    """`model.fit` on the split with one progress bar; (history, seconds)."""
    x_train, y_train, x_val, y_val = split
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=list(callbacks) + [EpochBar(title, epochs)],
    )
    return history, time.perf_counter() - start


def train_one(technique, seed, epochs, split):
    x_train, y_train, x_val, y_val = split
    model, network, callbacks = tech.build(technique, seed, epochs)
    title = f"[{technique} | seed {seed}] {tech.LABELS[technique]}"
    history, seconds = fit_with_bar(model, title, epochs, split, callbacks)
    train_acc = accuracy(network, x_train, y_train)
    val_acc = accuracy(network, x_val, y_val)
    val_loss = history.history["val_loss"]
    return {
        "technique": technique,
        "seed": seed,
        "train_acc": train_acc,
        "val_acc": val_acc,
        "gap": train_acc - val_acc,
        "val_loss": cross_entropy(network, x_val, y_val),
        "best_epoch": int(np.argmin(val_loss)) + 1,
        "units_at_cap": tech.units_at_cap(technique, network),
        "seconds": seconds,
        "history": {k: list(map(float, v)) for k, v in history.history.items()},
    }


def _at_cap(runs):
    shares = [r["units_at_cap"] for r in runs]
    if any(s is None for s in shares):
        return "-"
    return report.mean_std(shares, "{:.0%}")


def summarize(runs, names):
    rows = []
    for name in names:
        mine = [r for r in runs if r["technique"] == name]
        rows.append(
            [
                name,
                report.mean_std([r["train_acc"] for r in mine]),
                report.mean_std([r["val_acc"] for r in mine]),
                report.mean_std([r["gap"] for r in mine]),
                report.mean_std([r["val_loss"] for r in mine]),
                report.mean_std([r["best_epoch"] for r in mine], "{:.0f}"),
                _at_cap(mine),
                report.mean_std([r["seconds"] for r in mine], "{:.1f}"),
            ]
        )
    return rows


def run(names, epochs, seeds, out):
    """Trains every technique for every seed and writes the report."""
    report.check_writable(out)
    split = data.load_digits_split(VAL_FRACTION)
    print(
        f"Digits: {len(split[0])} training and {len(split[2])} validation "
        f"images; backend {keras.backend.backend()}; {epochs} epochs; "
        f"{seeds} seed(s)."
    )
    runs = [
        train_one(name, seed, epochs, split)
        for name in names
        for seed in range(seeds)
    ]
    rows = summarize(runs, names)
    print()
    print(report.table(COLUMNS, rows))
    curves = report.plot_curves(
        {
            n: next(r for r in runs if r["technique"] == n)["history"]
            for n in names
        },
        tech.LABELS,
        os.path.join(out, "loss_curves.png"),
    )
    gaps = [[r["gap"] for r in runs if r["technique"] == n] for n in names]
    bars = report.plot_bars(
        names,
        [np.mean(g) for g in gaps],
        [np.std(g, ddof=1) if len(g) > 1 else 0.0 for g in gaps],
        "train acc - val acc",
        "Generalization gap (lower is better)",
        os.path.join(out, "gap.png"),
    )
    settings = [f"| {n} | {tech.LABELS[n]} |" for n in names]
    report.write_report(
        out,
        "Regularization on handwritten digits",
        f"Backend `{keras.backend.backend()}`, {epochs} epochs, {seeds} "
        f"seed(s); {len(split[0])} training / {len(split[2])} validation "
        "images (scikit-learn digits, stratified split). Mean ± std over "
        "seeds. `gap` is train minus validation accuracy; `val loss` is "
        "the validation cross-entropy of the final (or restored) weights; "
        "`best epoch` is the epoch of the lowest validation loss; `units "
        "at cap` is the share of Dense units whose weight norm sits on the "
        "max-norm cap after training (`-` where no cap is set), so a cap "
        "that never binds shows as 0%.",
        [
            report.markdown_table(COLUMNS, rows),
            "",
            "| technique | setting |",
            "|---|---|",
            *settings,
        ],
        {"loss curves": curves, "generalization gap": bars},
    )
    return rows
