"""`keras-regularize demo distill`: a small student, alone and distilled."""

import os
import time

import keras
import numpy as np

import keras_regularize as kr
from keras_regularize._demo import data
from keras_regularize.experiments import _report as report
from keras_regularize.experiments._progress import StudyProgress

COLUMNS = ["model", "weights", "train acc", "val acc", "val loss", "seconds"]
ROWS = ("teacher", "student alone", "student distilled")
TEMPERATURE = 4.0
ALPHA = 0.7


def build_teacher(seed, input_dim=64):
    """A wide two-layer network with input noise and dropout (~300k weights)."""
    return data.mlp(
        "teacher", seed, (512, 512), 0.3, input_noise=0.3, input_dim=input_dim
    )


def build_student(seed, input_dim=64):
    """One hidden layer (~19k weights, 16x fewer than the teacher)."""
    return data.mlp("student", seed + 1000, (256,), input_dim=input_dim)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(network, x, y):
    logits = network.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def cross_entropy(network, x, y):
    """Mean sparse cross-entropy of the network's logits on `(x, y)`."""
    logits = network.predict(x, batch_size=512, verbose=0)
    return float(keras.ops.convert_to_numpy(_loss()(y, logits)))


def _fit(model, title, epochs, split, progress):
    """`fit` on the split, advancing the study's bar; (history, seconds)."""
    x_train, y_train, x_val, y_val = split
    progress.begin_run(title, epochs)
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        validation_batch_size=512,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[progress.callback()],
    )
    seconds = time.perf_counter() - start
    progress.end_run()
    return history.history, seconds


def _row(name, seed, network, history, seconds, split):
    x_train, y_train, x_val, y_val = split
    return {
        "model": name,
        "seed": seed,
        "weights": network.count_params(),
        "train_acc": accuracy(network, x_train, y_train),
        "val_acc": accuracy(network, x_val, y_val),
        "val_loss": cross_entropy(network, x_val, y_val),
        "seconds": seconds,
        "history": {k: list(map(float, v)) for k, v in history.items()},
    }


def train_seed(seed, epochs, split, progress):
    """Teacher, student alone and distilled student for one seed."""
    runs = []
    teacher = build_teacher(seed)
    teacher.compile("adam", _loss(), metrics=["accuracy"])
    # The teacher, the larger model, gets twice the student's epochs.
    history, seconds = _fit(
        teacher, f"teacher | seed {seed}", 2 * epochs, split, progress
    )
    runs.append(_row("teacher", seed, teacher, history, seconds, split))

    alone = build_student(seed)
    alone.compile(keras.optimizers.Adam(3e-3), _loss(), metrics=["accuracy"])
    history, seconds = _fit(
        alone, f"student alone | seed {seed}", epochs, split, progress
    )
    runs.append(_row("student alone", seed, alone, history, seconds, split))

    student = build_student(seed)
    distiller = kr.models.Distiller(
        student=student,
        teacher=teacher,
        temperature=TEMPERATURE,
        alpha=ALPHA,
        cache_teacher_outputs=True,
    )
    distiller.compile(
        keras.optimizers.Adam(3e-3), _loss(), metrics=["accuracy"]
    )
    history, seconds = _fit(
        distiller, f"student distilled | seed {seed}", epochs, split, progress
    )
    runs.append(
        _row("student distilled", seed, student, history, seconds, split)
    )
    return runs


def summarize(runs):
    rows = []
    for name in ROWS:
        mine = [r for r in runs if r["model"] == name]
        rows.append(
            [
                name,
                f"{mine[0]['weights']:,}",
                report.mean_std([r["train_acc"] for r in mine]),
                report.mean_std([r["val_acc"] for r in mine]),
                report.mean_std([r["val_loss"] for r in mine]),
                report.mean_std([r["seconds"] for r in mine], "{:.1f}"),
            ]
        )
    return rows


def plot_val_accuracy(runs, path):
    """Validation accuracy per epoch, first seed, one line per model."""
    plt = report._pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in ROWS:
        run = next(r for r in runs if r["model"] == name)
        curve = run["history"]["val_accuracy"]
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Distillation on digits")
    ax.legend(fontsize=8)
    return report.save_figure(fig, path)


def run(epochs, seeds, out, label_noise=0.0, progress=True):
    """Trains the three models for every seed and writes the report."""
    report.check_writable(out)
    x_train, y_train, x_val, y_val = data.load_digits_split()
    split = (x_train, data.add_label_noise(y_train, label_noise), x_val, y_val)
    print(
        f"Digits: {len(split[0])} training ({label_noise:.0%} of their "
        f"labels replaced at random) and {len(split[2])} validation "
        f"images; backend {keras.backend.backend()}; {epochs} epochs; "
        f"{seeds} seed(s); temperature {TEMPERATURE}, alpha {ALPHA}."
    )
    bar = StudyProgress(4 * epochs * seeds, enabled=progress)
    try:
        runs = [
            r
            for seed in range(seeds)
            for r in train_seed(seed, epochs, split, bar)
        ]
    finally:
        bar.close()
    rows = summarize(runs)
    print()
    print(report.table(COLUMNS, rows))
    curves = plot_val_accuracy(runs, os.path.join(out, "val_accuracy.png"))
    accs = [[r["val_acc"] for r in runs if r["model"] == n] for n in ROWS]
    bars = report.plot_bars(
        list(ROWS),
        [np.mean(a) for a in accs],
        [np.std(a, ddof=1) if len(a) > 1 else 0.0 for a in accs],
        "validation accuracy",
        "Teacher, student alone, distilled student",
        os.path.join(out, "accuracy.png"),
    )
    path = report.write_report(
        out,
        "Knowledge distillation on handwritten digits",
        f"Backend `{keras.backend.backend()}`, {epochs} epochs, {seeds} "
        f"seed(s); {len(split[0])} training / {len(split[2])} validation "
        f"images ({label_noise:.0%} of the training labels replaced at "
        "random). The student is trained twice with the same budget and "
        "initial weights: alone on the labels, and with "
        f"`keras_regularize.models.Distiller` (temperature {TEMPERATURE}, "
        f"alpha {ALPHA}, cached teacher outputs). The teacher trains for "
        "twice as many epochs. Mean ± std over seeds.",
        [report.markdown_table(COLUMNS, rows)],
        {"validation accuracy": curves, "accuracy": bars},
    )
    print(f"\nReport written to {path}")
    return rows
