"""`keras-regularize demo`: each regularizer against a severely overfit MLP.

A thin layer over `keras_regularize.experiments.ablation`: the data, the
network and the rows come from `_demo.data` and `_demo.techniques`; the
training, the table and the report are the ablation's own.
"""

import keras

from keras_regularize._demo import data
from keras_regularize._demo import techniques as tech
from keras_regularize.experiments import _report
from keras_regularize.experiments.ablation_study import ablation


def describe_data(split, label_noise, epochs, seeds):
    return (
        f"Digits: {len(split[0])} training images ({label_noise:.0%} of "
        f"their labels replaced at random) and {len(split[2])} validation "
        f"images (clean labels); backend {keras.backend.backend()}; "
        f"{epochs} epochs; {seeds} seed(s)."
    )


def intro(split, label_noise, epochs, seeds):
    return (
        f"Backend `{keras.backend.backend()}`, {epochs} epochs, {seeds} "
        f"seed(s) (the same seeds for every row). {len(split[0])} training "
        f"digits, {label_noise:.0%} of whose labels were replaced by a "
        f"random class, and {len(split[2])} validation digits with clean "
        "labels (scikit-learn's 8x8 digits, stratified split). The network "
        "is a 64-512-512-10 ReLU MLP (about 300k weights) with a skip "
        "around its second layer, trained with Adam (learning rate 1e-3, "
        "batch 64). `train acc` is measured on the noisy training labels: "
        "1.0 means the network memorized the noise."
    )


def study(rows, epochs, seeds, out, label_noise, progress=True):
    """The demo's data and network through `ablation`; prints the table.

    Shared by `demo` and `ablate`. Returns `(split, result)`.
    """
    _report.check_writable(out)
    split = data.noisy_digits_split(tech.TRAIN_SIZE, label_noise)
    print(describe_data(split, label_noise, epochs, seeds))
    result = ablation(
        tech.build_model,
        split,
        rows,
        seeds=seeds,
        epochs=epochs,
        progress=progress,
    )
    print()
    print(result.table())
    return split, result


def run(names, epochs, seeds, out, label_noise, progress=True):
    """Runs `ablation` on the demo's rows and writes the report to `out`."""
    rows = {n: tech.ROWS[n] for n in names if n != "none"}
    split, result = study(rows, epochs, seeds, out, label_noise, progress)
    path = result.report(
        out,
        "Regularization on handwritten digits with noisy labels",
        intro(split, label_noise, epochs, seeds),
    )
    print(f"\nReport written to {path}")
    return result
