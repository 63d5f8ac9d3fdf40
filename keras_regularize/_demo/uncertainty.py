"""`keras-regularize demo uncertainty`: MC dropout on the digits."""

import os
import time

import keras
import numpy as np

import keras_regularize as kr
from keras_regularize._demo import data
from keras_regularize.experiments import _report as report
from keras_regularize.experiments._progress import StudyProgress

COLUMNS = ["most certain", "accuracy", "mean entropy", "max entropy"]
FRACTIONS = (1.0, 0.9, 0.75, 0.5, 0.25)
DROPOUT = 0.3
SHOWN = 16


def build_network(seed, input_dim=64):
    return data.mlp("digits_mc", seed, (256, 256), DROPOUT, input_dim=input_dim)


def coverage_accuracy(correct, entropy, fraction):
    """Accuracy and entropies over the `fraction` least uncertain inputs."""
    keep = max(1, int(round(fraction * len(correct))))
    order = np.argsort(entropy, kind="stable")[:keep]
    return (
        float(np.mean(correct[order])),
        float(np.mean(entropy[order])),
        float(np.max(entropy[order])),
    )


def train_seed(seed, epochs, samples, split, progress):
    x_train, y_train, x_val, y_val = split
    network = build_network(seed)
    network.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    progress.begin_run(f"MC dropout | seed {seed}", epochs)
    start = time.perf_counter()
    network.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        validation_batch_size=512,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[progress.callback()],
    )
    progress.end_run()
    mc_network = kr.models.with_mc_dropout(network)
    prediction = kr.models.mc_predict(
        mc_network, x_val, samples=samples, from_logits=True
    )
    seconds = time.perf_counter() - start
    mean = keras.ops.convert_to_numpy(prediction.mean)
    entropy = keras.ops.convert_to_numpy(prediction.entropy)
    mutual = keras.ops.convert_to_numpy(prediction.mutual_information)
    predicted = np.argmax(mean, axis=-1)
    deterministic = np.argmax(
        network.predict(x_val, batch_size=512, verbose=0), axis=-1
    )
    return {
        "seed": seed,
        "correct": predicted == y_val,
        "entropy": entropy,
        "mutual_information": mutual,
        "predicted": predicted,
        "deterministic_acc": float(np.mean(deterministic == y_val)),
        "seconds": seconds,
    }


def summarize(runs):
    rows = []
    for fraction in FRACTIONS:
        stats = [
            coverage_accuracy(r["correct"], r["entropy"], fraction)
            for r in runs
        ]
        rows.append(
            [
                f"{fraction:.0%}",
                report.mean_std([s[0] for s in stats]),
                report.mean_std([s[1] for s in stats]),
                report.mean_std([s[2] for s in stats]),
            ]
        )
    return rows


def plot_accuracy_vs_entropy(run, path, bins=8):
    """Accuracy per entropy bin, and the entropy of right and wrong answers."""
    plt = report._pyplot()
    entropy, correct = run["entropy"], run["correct"]
    edges = np.quantile(entropy, np.linspace(0.0, 1.0, bins + 1))
    index = np.clip(
        np.searchsorted(edges, entropy, side="right") - 1, 0, bins - 1
    )
    centres, accs = [], []
    for b in range(bins):
        mask = index == b
        if mask.any():
            centres.append(float(np.mean(entropy[mask])))
            accs.append(float(np.mean(correct[mask])))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(centres, accs, marker="o")
    left.set_xlabel("predictive entropy (nats), bin mean")
    left.set_ylabel("accuracy in bin")
    left.set_title("Accuracy falls as uncertainty rises")
    top = max(float(entropy.max()), 1e-3)
    hist_bins = np.linspace(0.0, top, 25)
    right.hist(entropy[correct], bins=hist_bins, alpha=0.6, label="correct")
    right.hist(entropy[~correct], bins=hist_bins, alpha=0.6, label="wrong")
    right.set_yscale("log")
    right.set_xlabel("predictive entropy (nats)")
    right.set_ylabel("validation digits")
    right.legend(fontsize=8)
    return report.save_figure(fig, path)


def plot_most_uncertain(run, x_val, y_val, path):
    plt = report._pyplot()
    order = np.argsort(-run["entropy"], kind="stable")[:SHOWN]
    images = data.digit_images(x_val)
    cols = 8
    rows = (len(order) + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.3 * cols, 2.1 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(
            f"true {y_val[i]} pred {run['predicted'][i]}\n"
            f"H={run['entropy'][i]:.2f}",
            fontsize=7,
            color="black" if run["correct"][i] else "red",
        )
    fig.suptitle("Most uncertain validation digits (red: wrong)", fontsize=9)
    return report.save_figure(fig, path)


def run(epochs, seeds, out, samples=30, label_noise=0.0, progress=True):
    """Trains, predicts with MC dropout for every seed, writes the report."""
    report.check_writable(out)
    x_train, y_train, x_val, y_val = data.load_digits_split()
    y_train = data.add_label_noise(y_train, label_noise)
    split = (x_train, y_train, x_val, y_val)
    print(
        f"Digits: {len(x_train)} training and {len(x_val)} validation "
        f"images; backend {keras.backend.backend()}; {epochs} epochs; "
        f"{seeds} seed(s); {samples} MC dropout samples; "
        f"{label_noise:.0%} of the training labels replaced at random."
    )
    bar = StudyProgress(epochs * seeds, enabled=progress)
    try:
        runs = [
            train_seed(seed, epochs, samples, split, bar)
            for seed in range(seeds)
        ]
    finally:
        bar.close()
    rows = summarize(runs)
    print()
    print(report.table(COLUMNS, rows))
    mc_acc = report.mean_std([np.mean(r["correct"]) for r in runs])
    det_acc = report.mean_std([r["deterministic_acc"] for r in runs])
    print(
        f"\nAll validation digits: MC mean prediction accuracy {mc_acc}, "
        f"deterministic (dropout off) {det_acc}."
    )
    curve = plot_accuracy_vs_entropy(
        runs[0], os.path.join(out, "accuracy_vs_entropy.png")
    )
    grid = plot_most_uncertain(
        runs[0], x_val, y_val, os.path.join(out, "most_uncertain.png")
    )
    path = report.write_report(
        out,
        "MC dropout uncertainty on handwritten digits",
        f"Backend `{keras.backend.backend()}`, {epochs} epochs, {seeds} "
        f"seed(s), {samples} samples per input from "
        "`keras_regularize.models.mc_predict` on the network converted by "
        f"`with_mc_dropout` (dropout {DROPOUT}). Validation digits are "
        "ranked by predictive entropy; each row keeps the given share of "
        "the most certain ones. Mean ± std over seeds.",
        [
            report.markdown_table(COLUMNS, rows),
            "",
            f"All validation digits: MC mean prediction accuracy {mc_acc}, "
            f"deterministic prediction (dropout off) {det_acc}.",
        ],
        {"accuracy vs entropy": curve, "most uncertain digits": grid},
    )
    print(f"\nReport written to {path}")
    return rows
