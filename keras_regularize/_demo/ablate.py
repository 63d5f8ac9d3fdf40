"""`keras-regularize ablate <setting> --values ...`: the chapter's sweeps.

One row per value through `keras_regularize.experiments.ablation`, on the
demo's data and network; the value 0 is the `none` row itself. Besides the
ablation's report, `sweep.png` plots final train and validation accuracy
against the value, with error bars over seeds.
"""

import os

import numpy as np

from keras_regularize._demo import overfitting
from keras_regularize.experiments import _report

# Command-line name -> (technique, default values, whether to plot on a
# log axis). Every one of them is "off" at 0.
SETTINGS = {
    "dropout": ("dropout", (0.0, 0.25, 0.5, 0.75), False),
    "weight-decay": (
        "weight_decay",
        (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        True,
    ),
    "label-smoothing": ("label_smoothing", (0.0, 0.05, 0.1, 0.2, 0.3), False),
    "stochastic-depth": ("stochastic_depth", (0.0, 0.2, 0.35, 0.5), False),
}


def row_name(technique, value):
    return f"{technique}={value:g}"


def plot_sweep(result, setting, values, path):
    """Final accuracy against the value: mean ± std over seeds."""
    technique, _, log = SETTINGS[setting]
    plt = _report._pyplot()
    names = ["none" if v == 0 else row_name(technique, v) for v in values]
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    positions = list(range(len(values))) if log else list(values)
    for metric, label in (("val_acc", "validation"), ("train_acc", "train")):
        series = [result.values(n, metric) for n in names]
        spread = [np.std(s, ddof=1) if len(s) > 1 else 0.0 for s in series]
        ax.errorbar(
            positions,
            [float(np.mean(s)) for s in series],
            yerr=spread,
            marker="o",
            capsize=3,
            label=label,
        )
    if log:
        ax.set_xticks(positions)
        ax.set_xticklabels([f"{v:g}" for v in values], fontsize=8)
    ax.set_xlabel(setting)
    ax.set_ylabel("final accuracy (mean ± std)")
    ax.set_title(f"Accuracy against {setting}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _report.save_figure(fig, path)


def run(
    setting,
    values,
    epochs,
    seeds,
    out,
    label_noise,
    progress=True,
):
    """One ablation over the values of `setting`; report and sweep plot."""
    technique = SETTINGS[setting][0]
    values = sorted(set(float(v) for v in values) | {0.0})
    rows = {row_name(technique, v): row_name(technique, v) for v in values if v}
    split, result = overfitting.study(
        rows, epochs, seeds, out, label_noise, progress
    )
    sweep = plot_sweep(result, setting, values, os.path.join(out, "sweep.png"))
    path = _report.write_ablation_report(
        result,
        out,
        f"Sweep of {setting} on handwritten digits with noisy labels",
        overfitting.intro(split, label_noise, epochs, seeds)
        + f" Rows: {setting} at "
        + ", ".join(f"{v:g}" for v in values)
        + " (0 is the `none` row).",
        {"accuracy against the value": sweep},
    )
    print(f"\nReport written to {path}")
    return result
