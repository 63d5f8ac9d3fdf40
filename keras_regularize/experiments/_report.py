"""Tables, markdown reports and PNG plots: the ablation's and the demo's."""

import math
import os

import numpy as np


def mean_std(values, fmt="{:.3f}"):
    """`"mean ± std"` (sample std), or the one value, or `-` for none."""
    values = np.asarray(values, dtype="float64")
    if len(values) == 0 or np.all(np.isnan(values)):
        return "-"
    values = values[~np.isnan(values)]
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


def table(header, rows):
    """A plain-text table with aligned columns."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def markdown_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Lays out, writes (PNG, 110 dpi) and closes `fig`; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_curves(histories, labels, path):
    """Train and validation loss per technique, one panel each."""
    plt = _pyplot()
    n = len(histories)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False
    )
    for ax, (name, history) in zip(axes.flat, histories.items()):
        epochs = np.arange(1, len(history["loss"]) + 1)
        ax.plot(epochs, history["loss"], label="train loss")
        ax.plot(epochs, history["val_loss"], label="validation loss")
        ax.set_title(labels.get(name, name), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return save_figure(fig, path)


def plot_bars(names, means, stds, ylabel, title, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def writable_folder(out):
    """Creates `out`; `None` when it is writable, else the reason."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return str(e.strerror or e)
    return None


def check_writable(out):
    """Creates `out` and proves it writable now, not after training."""
    reason = writable_folder(out)
    if reason is not None:
        raise SystemExit(
            f"keras-regularize: error: argument --out: cannot write to "
            f"{out!r} ({reason})"
        )


def write_report(out, title, intro, body, images):
    """Writes `out/report.md`: title, intro paragraph, body lines, images.

    `images` maps alt text to the PNG paths (inside `out`) to embed.
    """
    lines = [f"# {title}", "", intro, "", *body, ""]
    for alt, path in images.items():
        lines += [f"![{alt}]({os.path.basename(path)})", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _points(x):
    return f"{100 * x:+.1f}"


def _se_points(effect):
    if math.isnan(effect["se"]):
        return "n/a (one seed)"
    return f"{100 * effect['se']:.1f}"


def conclusions(result):
    """The "start simple" section of an ablation report (markdown lines)."""
    effects = result.effects()
    base = result.names[0]
    base_seconds = float(np.mean(result.values(base, "seconds")))
    one_seed = len(result.seeds) < 2
    lines = ["## Start simple: what this run says", ""]
    if one_seed:
        lines += [
            "One seed only: no standard error, so no effect below can be "
            "told apart from seed noise. Run with more seeds (3 or more) "
            "before trusting the ranking.",
            "",
        ]
    ranking = sorted(effects.items(), key=lambda kv: -kv[1]["mean"])
    lines += [
        "Ranked by measured gain in validation accuracy over `none` "
        "(paired by seed, ± one standard error; * = more than two standard "
        "errors), with the extra training time each costs:",
        "",
        "| rank | technique | gain (pts) | SE | extra s / run "
        "| gain per extra second |",
        "|---|---|---|---|---|---|",
    ]
    for rank, (name, effect) in enumerate(ranking, 1):
        extra = float(np.mean(result.values(name, "seconds"))) - base_seconds
        if effect["mean"] <= 0:
            per_second = "-"
        elif extra <= 0.05 * max(base_seconds, 1e-9):
            per_second = "free (no extra time)"
        else:
            per_second = f"{100 * effect['mean'] / extra:.2f} pts/s"
        star = " *" if effect["significant"] else ""
        lines.append(
            f"| {rank} | {name} | {_points(effect['mean'])}{star} | "
            f"{_se_points(effect)} | {extra:+.1f} | {per_second} |"
        )
    lines.append("")
    helped = [n for n, e in ranking if e["significant"] and e["mean"] > 0]
    hurt = [n for n, e in ranking if e["significant"] and e["mean"] < 0]
    flat = [n for n, e in ranking if not e["significant"]]
    if helped:
        lines.append(
            f"- **Helped** (beyond two standard errors): {', '.join(helped)}."
        )
    if one_seed:
        flat = []
    for name in flat:
        effect = effects[name]
        lines.append(
            f"- **{name} did not measurably help here**: "
            f"{_points(effect['mean'])} ± {_se_points(effect)} pts is within "
            "two standard errors of no effect."
        )
    for name in hurt:
        lines.append(
            f"- **{name} hurt here**: {_points(effects[name]['mean'])} pts "
            "against `none`."
        )
    combos = [n for n in result.names[1:] if len(result.components[n]) > 1]
    singles = {
        result.components[n][0]: n
        for n in result.names[1:]
        if len(result.components.get(n, [])) == 1
    }
    for combo in combos:
        parts = [singles[c] for c in result.components[combo] if c in singles]
        if not parts:
            lines.append(
                f"- **What combining bought**: `{combo}` "
                f"({', '.join(result.components[combo])}) scores "
                f"{_points(effects[combo]['mean'])} pts over `none`; none "
                "of its parts ran alone in this study, so what stacking "
                "added to them is not measured."
            )
            continue
        best = max(parts, key=lambda n: effects[n]["mean"])
        bought = paired(result, combo, best)
        verdict = (
            "more than two standard errors"
            if bought["significant"]
            else "within two standard errors: no measurable gain from stacking"
        )
        lines.append(
            f"- **What combining bought**: `{combo}` "
            f"({', '.join(result.components[combo])}) scores "
            f"{_points(effects[combo]['mean'])} pts over `none`; against its "
            f"best single part, `{best}`, that is "
            f"{_points(bought['mean'])} ± {_se_points(bought)} pts "
            f"({verdict}), for "
            f"{np.mean(result.values(combo, 'seconds')):.1f} s a run."
        )
    for key in result.measure_names():
        for name in result.names:
            shares = [
                r["measures"][key]
                for r in result.runs
                if r["technique"] == name and key in r.get("measures", {})
            ]
            if not shares:
                continue
            bound = sum(s > 0 for s in shares)
            lines.append(
                f"- `{name}`: {key} after training {mean_std(shares, '{:.0%}')}"
                f"; the cap bound in {bound} of {len(shares)} runs"
                + (
                    " (a cap that never binds changes nothing)."
                    if bound == 0
                    else "."
                )
            )
    if helped:
        first = max(
            helped,
            key=lambda n: (
                effects[n]["mean"]
                / max(
                    np.mean(result.values(n, "seconds")) - base_seconds,
                    0.05 * max(base_seconds, 1e-9),
                )
            ),
        )
        lines += [
            "",
            f"Start with `{first}`: the largest significant gain per "
            "second of training in this run. Add the next one only if the "
            "gap stays large, and keep it only if it still wins, paired by "
            "seed, against what you already have.",
        ]
    return lines


def paired(result, name, other, metric="val_acc"):
    """Paired difference `name - other` over the result's seeds."""
    from keras_regularize.experiments.ablation_result import paired_difference

    return paired_difference(
        result.values(name, metric), result.values(other, metric)
    )


def mean_curve(result, name, key):
    """Mean over seeds of one logged curve, cut to the shortest run."""
    curves = [
        r["history"][key]
        for r in result.runs
        if r["technique"] == name and key in r.get("history", {})
    ]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    return np.mean([c[:length] for c in curves], axis=0)


def plot_accuracy_curves(result, path):
    """Train and validation accuracy per epoch, one panel per row."""
    plt = _pyplot()
    n = len(result.names)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.0 * cols, 2.3 * rows),
        squeeze=False,
        sharey=True,
    )
    for ax, name in zip(axes.flat, result.names):
        for key, label in (
            ("accuracy", "train (batches)"),
            ("val_accuracy", "validation"),
        ):
            curve = mean_curve(result, name, key)
            if curve is not None:
                ax.plot(np.arange(1, len(curve) + 1), curve, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylabel("accuracy", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_effects(result, path):
    """Paired effect on validation accuracy, bars of two standard errors."""
    plt = _pyplot()
    effects = result.effects()
    names = list(effects)[::-1]
    means = [100 * effects[n]["mean"] for n in names]
    errors = [
        0.0 if math.isnan(effects[n]["se"]) else 200 * effects[n]["se"]
        for n in names
    ]
    colors = [
        "#4c72b0" if effects[n]["significant"] else "#b0b0b0" for n in names
    ]
    fig, ax = plt.subplots(figsize=(6.0, 0.38 * len(names) + 1.2))
    ax.barh(range(len(names)), means, xerr=errors, capsize=3, color=colors)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("validation accuracy vs none (points; bars: ± 2 SE)")
    ax.set_title("Paired effect per technique (blue: beyond 2 SE)", fontsize=9)
    return save_figure(fig, path)


def write_ablation_report(result, path, title, intro, extra_images=None):
    """`report.md`, `effects.png`, `curves.png` and `gap.png` in `path`.

    `extra_images` (alt text -> PNG path in `path`) are embedded first.
    """
    images = dict(extra_images or {})
    images |= {
        "paired effects": plot_effects(
            result, os.path.join(path, "effects.png")
        ),
        "accuracy curves": plot_accuracy_curves(
            result, os.path.join(path, "curves.png")
        ),
    }
    gaps = [result.values(n, "gap") for n in result.names]
    images["generalization gap"] = plot_bars(
        result.names,
        [float(np.mean(g)) for g in gaps],
        [float(np.std(g, ddof=1)) if len(g) > 1 else 0.0 for g in gaps],
        "train acc - val acc",
        "Generalization gap (lower is better)",
        os.path.join(path, "gap.png"),
    )
    settings = ["| technique | setting |", "|---|---|"] + [
        f"| {n} | {result.labels.get(n, n)} |" for n in result.names
    ]
    intro = intro or (
        f"{len(result.names)} rows x {len(result.seeds)} seeds, up to "
        f"{result.epochs} epochs each; {result.train_size} training / "
        f"{result.val_size} validation samples."
    )
    body = [
        "Mean ± std over seeds. `gap` is train minus validation accuracy; "
        "`val loss` is the validation cross-entropy (no label smoothing) of "
        "the final weights; `best epoch` is the epoch of the lowest logged "
        "validation loss; `Δ val acc vs none` is the paired difference "
        "against `none` on the same seeds, ± its standard error, * where it "
        "exceeds two standard errors.",
        "",
        result.markdown(),
        "",
        *settings,
        "",
        *conclusions(result),
    ]
    return write_report(path, title, intro, body, images)
