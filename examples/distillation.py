"""Exercise: knowledge distillation and self-distillation on the digits.

A wide teacher is trained on the labels. A small student is then trained
twice from the same initial weights: alone on the labels, and with
`kr.models.Distiller`, which minimises

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
        + (1 - alpha) * cross-entropy(labels, student)

so the student also learns how the teacher spreads probability over the
wrong classes. `cache_teacher_outputs=True` runs the frozen teacher once per
`fit` rather than on every batch. Finally `Distiller.self_distill` trains a
fresh copy of the lone student with the lone student as its teacher (the
same architecture on both sides, T=2, alpha=0.5): the chapter presents this
as regularization without a bigger model; the numbers show what it buys on
a data set this small.

Students are trained over a few seeds because single runs on 899
validation digits differ by a handful of images. The plot shows the
validation accuracy curves of one seed and the final accuracies of all.

Run: `KERAS_BACKEND=jax python examples/distillation.py` (`KR_SMOKE=1` for a
few-second check). Writes `example_outputs/distillation.png`.
"""

import keras
import numpy as np
from _common import SMOKE
from _common import SPARSE_CE
from _common import digits
from _common import epochs
from _common import mlp
from _common import out_path
from _common import pyplot

import keras_regularize as kr

SEEDS = (0,) if SMOKE else (0, 1, 2)
STUDENT = dict(hidden=256, depth=1)
STUDENT_LR = 3e-3


def adam():
    return keras.optimizers.Adam(STUDENT_LR)


def fit(model, data, n_epochs):
    x_train, y_train, x_val, y_val = data
    return model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=n_epochs,
        batch_size=64,
        verbose=0,
    ).history


def val_accuracy(model, data):
    logits = model.predict(data[2], batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == data[3]))


def main():
    data = digits()
    teacher = mlp(hidden=512, depth=2, dropout=0.3, seed=100)
    teacher.compile("adam", SPARSE_CE, metrics=["accuracy"])
    curves = {"teacher": fit(teacher, data, epochs(60))["val_accuracy"]}
    finals = {"teacher": [val_accuracy(teacher, data)]}

    for seed in SEEDS:
        alone = mlp(**STUDENT, seed=seed)
        alone.compile(adam(), SPARSE_CE, metrics=["accuracy"])
        runs = {"student alone": (alone, fit(alone, data, epochs(60)))}

        student = mlp(**STUDENT, seed=seed)  # same initial weights as alone
        distiller = kr.models.Distiller(
            student=student,
            teacher=teacher,
            temperature=4.0,
            alpha=0.7,
            cache_teacher_outputs=True,
        )
        distiller.compile(adam(), SPARSE_CE, metrics=["accuracy"])
        runs["student distilled"] = (student, fit(distiller, data, epochs(60)))

        # The lone student teaches a fresh, trainable copy of its own
        # architecture, and is frozen from here on as its teacher.
        keras.utils.set_random_seed(seed + 10)
        born_again = kr.models.Distiller.self_distill(
            alone, temperature=2.0, alpha=0.5, cache_teacher_outputs=True
        )
        born_again.compile(adam(), SPARSE_CE, metrics=["accuracy"])
        runs["self-distilled"] = (
            born_again.student,
            fit(born_again, data, epochs(60)),
        )

        for name, (model, history) in runs.items():
            finals.setdefault(name, []).append(val_accuracy(model, data))
            if seed == SEEDS[0]:
                curves[name] = history["val_accuracy"]

    sizes = {
        "teacher": teacher.count_params(),
        "student alone": alone.count_params(),
        "student distilled": alone.count_params(),
        "self-distilled": alone.count_params(),
    }
    for name, accs in finals.items():
        spread = f" ± {np.std(accs):.3f}" if len(accs) > 1 else ""
        print(
            f"{name:17s} {sizes[name]:>7,} weights  val acc "
            f"{np.mean(accs):.3f}{spread}  (runs: "
            f"{', '.join(f'{a:.3f}' for a in accs)})"
        )
    gain = np.mean(finals["student distilled"]) - np.mean(
        finals["student alone"]
    )
    self_gain = np.mean(finals["self-distilled"]) - np.mean(
        finals["student alone"]
    )
    print(
        f"distillation changes the student's validation accuracy by "
        f"{100 * gain:+.1f} points, self-distillation by "
        f"{100 * self_gain:+.1f} points (seeds: {len(SEEDS)})"
    )

    plt = pyplot()
    fig, (curve_ax, bar_ax) = plt.subplots(
        1, 2, figsize=(10, 3.6), width_ratios=[1.6, 1], layout="constrained"
    )
    for name, curve in curves.items():
        curve_ax.plot(range(1, len(curve) + 1), curve, label=name)
    curve_ax.set_xlabel("epoch")
    curve_ax.set_ylabel("validation accuracy")
    curve_ax.set_ylim(max(0.8, min(min(c) for c in curves.values())), 1.0)
    curve_ax.set_title(f"Validation accuracy (seed {SEEDS[0]})", fontsize=10)
    curve_ax.legend(fontsize=8)
    names = list(finals)
    means = [np.mean(finals[n]) for n in names]
    bar_ax.bar(range(len(names)), means, color=[f"C{i}" for i in range(4)])
    for i, name in enumerate(names):
        bar_ax.plot([i] * len(finals[name]), finals[name], "k.", ms=5)
        top = max(finals[name]) + 0.001
        bar_ax.text(i, top, f"{means[i]:.3f}", ha="center", va="bottom")
    bar_ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names])
    every = [a for accs in finals.values() for a in accs]
    bar_ax.set_ylim(min(every) - 0.02, min(1.0, max(every) + 0.01))
    bar_ax.set_title("Final validation accuracy (dots: seeds)", fontsize=10)
    fig.savefig(out_path("distillation.png"), dpi=110)
    print("wrote", out_path("distillation.png"))


if __name__ == "__main__":
    main()
