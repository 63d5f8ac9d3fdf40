"""The result of `ablation`: runs, table, paired effects and a report."""

import math
import os

import numpy as np

from keras_regularize._export import export
from keras_regularize._validation import check_choice
from keras_regularize._validation import fail
from keras_regularize.experiments import _report

METRICS = ("train_acc", "val_acc", "gap", "val_loss", "best_epoch", "seconds")
COLUMNS = [
    "technique",
    "train acc",
    "val acc",
    "gap",
    "val loss",
    "best epoch",
    "seconds",
    "Δ val acc vs none (± SE)",
]


def paired_difference(values, baseline):
    """Mean and standard error of `values - baseline`, paired by position.

    The standard error is `std(d, ddof=1) / sqrt(n)`; it is NaN for one
    pair. `significant` is `|mean| > 2 * se`.
    """
    d = np.asarray(values, dtype="float64") - np.asarray(
        baseline, dtype="float64"
    )
    n = len(d)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    significant = bool(n > 1 and abs(mean) > 2 * se)
    return {"mean": mean, "se": se, "n": n, "significant": significant}


@export("keras_regularize.experiments.AblationResult")
class AblationResult:
    """What `keras_regularize.experiments.ablation` measured.

    Rows are techniques (the baseline `"none"` first), each trained once per
    seed. `runs` holds one dict per run: `technique`, `seed`, `train_acc`,
    `val_acc`, `gap` (train minus validation accuracy), `train_loss`,
    `val_loss` (cross-entropy without label smoothing), `best_epoch`,
    `epochs_run`, `seconds`, `measures` (a technique's own numbers, such as
    MaxNorm's share of units at the cap) and `history` (`fit`'s per-epoch
    logs).

    Args:
        runs: The list of run dicts.
        names: Row names, `"none"` first.
        labels: Dict of row name to a description of its settings.
        components: Dict of row name to the names of its techniques.
        seeds: The seeds, in order.
        epochs: The epoch budget of each run.
        train_size: Number of training samples.
        val_size: Number of validation samples.

    Example:

    >>> runs = [
    ...     {"technique": t, "seed": s, "val_acc": a}
    ...     for t, accs in (("none", (0.70, 0.72)), ("dropout", (0.80, 0.83)))
    ...     for s, a in enumerate(accs)]
    >>> result = keras_regularize.experiments.AblationResult(
    ...     runs, ["none", "dropout"], {}, {}, [0, 1], 1, 0, 0)
    >>> effect = result.effects()["dropout"]
    >>> round(effect["mean"], 3), round(effect["se"], 3), effect["significant"]
    (0.105, 0.005, True)
    """

    def __init__(
        self,
        runs,
        names,
        labels,
        components,
        seeds,
        epochs,
        train_size,
        val_size,
    ):
        self.runs = list(runs)
        self.names = list(names)
        self.labels = dict(labels)
        self.components = dict(components)
        self.seeds = list(seeds)
        self.epochs = epochs
        self.train_size = train_size
        self.val_size = val_size

    def values(self, name, metric="val_acc"):
        """One row's `metric`, one value per seed, in seed order."""
        if name not in self.names:
            fail("name", f"one of {', '.join(self.names)}", name)
        by_seed = {
            r["seed"]: r[metric] for r in self.runs if r["technique"] == name
        }
        return np.array([by_seed[s] for s in self.seeds], dtype="float64")

    def effects(self, metric="val_acc"):
        """Paired difference of each row against `"none"`, seed by seed.

        Returns a dict of row name (the baseline left out) to `{"mean",
        "se", "n", "significant"}`, where `significant` marks a mean
        difference larger than two standard errors.
        """
        metric = check_choice("metric", metric, METRICS + ("train_loss",))
        base = self.values(self.names[0], metric)
        return {
            name: paired_difference(self.values(name, metric), base)
            for name in self.names[1:]
        }

    def measure_names(self):
        """Names of the technique-specific columns, in first-seen order."""
        seen = []
        for run in self.runs:
            for key in run.get("measures", {}):
                if key not in seen:
                    seen.append(key)
        return seen

    def rows(self):
        """The table's rows (lists of strings), `"none"` first."""
        effects = self.effects()
        measures = self.measure_names()
        rows = []
        for name in self.names:
            cells = [name]
            for metric, fmt in (
                ("train_acc", "{:.3f}"),
                ("val_acc", "{:.3f}"),
                ("gap", "{:.3f}"),
                ("val_loss", "{:.3f}"),
                ("best_epoch", "{:.0f}"),
                ("seconds", "{:.1f}"),
            ):
                cells.append(_report.mean_std(self.values(name, metric), fmt))
            cells.append(_effect_text(effects.get(name)))
            for key in measures:
                shares = [
                    r["measures"][key]
                    for r in self.runs
                    if r["technique"] == name and key in r.get("measures", {})
                ]
                cells.append(_report.mean_std(shares, "{:.0%}"))
            rows.append(cells)
        return rows

    def columns(self):
        return COLUMNS + self.measure_names()

    def table(self):
        """The table as aligned plain text (what the CLI prints)."""
        return _report.table(self.columns(), self.rows())

    def markdown(self):
        """The table as a markdown table."""
        return _report.markdown_table(self.columns(), self.rows())

    def __str__(self):
        return self.table()

    def __repr__(self):
        return (
            f"<AblationResult: {len(self.names)} rows x {len(self.seeds)} "
            f"seeds, {self.epochs} epochs>"
        )

    def conclusions(self):
        """The "start simple" reading of this study, as markdown lines.

        The ranking by measured gain in validation accuracy (paired against
        `"none"`), the gain per extra second of training, what each
        combination bought over its best single technique, and a plain line
        for every technique that did not help.
        """
        return _report.conclusions(self)

    def report(self, path, title="Ablation study", intro=""):
        """Writes `path/report.md` and its PNG plots; returns the report path.

        The plots: `effects.png` (each row's paired effect on validation
        accuracy, with error bars of two standard errors), `curves.png`
        (training and validation accuracy per epoch, mean over seeds, one
        panel per row) and `gap.png` (the generalization gap, mean ± std).
        `path` is created if needed.
        """
        if not isinstance(path, (str, os.PathLike)):
            fail("path", "a folder path (a string)", path)
        path = os.fspath(path)
        reason = _report.writable_folder(path)
        if reason is not None:
            fail("path", f"a writable folder ({reason})", path)
        return _report.write_ablation_report(self, path, title, intro)


def _effect_text(effect):
    if effect is None:
        return "-"
    mean = 100 * effect["mean"]
    if math.isnan(effect["se"]):
        return f"{mean:+.1f} pts"
    star = " *" if effect["significant"] else ""
    return f"{mean:+.1f} ± {100 * effect['se']:.1f} pts{star}"
