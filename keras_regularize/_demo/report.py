"""Tables, markdown reports and PNG plots for the demo."""

import os

import numpy as np


def mean_std(values, fmt="{:.3f}"):
    values = np.asarray(values, dtype="float64")
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


def check_writable(out):
    """Creates `out` and proves it writable now, not after training."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise SystemExit(
            f"keras-regularize: error: argument --out: cannot write to "
            f"{out!r} ({e.strerror or e})"
        ) from None


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
    print(f"\nReport written to {path}")
    return path
