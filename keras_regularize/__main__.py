"""The `keras-regularize` command line (also `python -m keras_regularize`).

The backend is chosen before this module is imported, by the launcher
`keras_regularize_cli` (the console script's entry point); `python -m
keras_regularize` hands over to the same launcher.
"""

import argparse
import math
import sys

import keras

import keras_regularize
import keras_regularize_cli
from keras_regularize_cli import FRAMEWORKS


def _positive(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= 1 for {name}, received {text!r}"
            )
        return value

    return parse


def _number(name, low, high, high_open=False):
    """A float in `[low, high]` (or `[low, high)`), or an argparse error."""
    right = ")" if high_open else "]"
    bounds = f"[{low:g}, {'inf' if high is None else f'{high:g}'}{right}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value) and value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(
                f"expected a number in {bounds} for {name}, received {text!r}"
            )
        return value

    return parse


# What `--quick` changes where the flag itself is not given.
QUICK = {"epochs": 3, "seeds": 1, "samples": 5}


def _parser():
    from keras_regularize._demo import techniques as tech
    from keras_regularize._demo.ablate import SETTINGS

    parser = argparse.ArgumentParser(
        prog="keras-regularize",
        description="Regularization demos on real data (scikit-learn's "
        "handwritten digits; no download).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"keras-regularize {keras_regularize.__version__} (keras "
        f"{keras.__version__}, backend {keras.config.backend()})",
    )
    backend = {
        "choices": list(FRAMEWORKS),
        # Unset unless given, so a subcommand's default cannot hide a
        # value given before the subcommand.
        "default": argparse.SUPPRESS,
        "help": "Keras backend, set before Keras is imported",
    }
    parser.add_argument("--backend", **backend)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, epochs, out, label_noise):
        p.add_argument("--backend", **backend)
        p.add_argument(
            "--epochs",
            type=_positive("--epochs"),
            default=None,
            help=f"epochs per run (default {epochs}; 3 with --quick)",
        )
        p.add_argument(
            "--seeds",
            type=_positive("--seeds"),
            default=None,
            help="seeds per row, the same for every row (default 3; 1 with "
            "--quick)",
        )
        p.add_argument("--out", default=out, help="report folder")
        p.add_argument(
            "--quick",
            action="store_true",
            help="3 epochs and one seed unless given: seconds, for smoke tests",
        )
        p.add_argument(
            "--label-noise",
            type=_number("--label-noise", 0.0, 1.0),
            default=label_noise,
            help="share of training labels replaced by a random class "
            f"(default {label_noise:g})",
        )
        p.set_defaults(full_epochs=epochs)

    demo = sub.add_parser(
        "demo",
        help="an over-capacity network on noisy labels, with and without "
        "each regularizer: table, report.md and plots",
    )
    common(demo, tech.EPOCHS, "keras-regularize-report", tech.LABEL_NOISE)

    def techniques(text):
        names = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in names if t not in tech.TECHNIQUES]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown technique(s) {', '.join(unknown) or repr(text)}; "
                f"choose from {', '.join(tech.TECHNIQUES)}"
            )
        return names

    demo.add_argument(
        "--techniques",
        type=techniques,
        default=list(tech.TECHNIQUES),
        help="comma-separated subset of: " + ", ".join(tech.TECHNIQUES),
    )
    ablate = sub.add_parser(
        "ablate",
        help="the chapter's sweeps: one setting at several values, curves "
        "per value and final accuracy against the value",
    )
    ablate.add_argument("setting", choices=list(SETTINGS))
    common(ablate, tech.EPOCHS, "keras-regularize-ablate", tech.LABEL_NOISE)
    ablate.add_argument(
        "--values",
        nargs="+",
        default=None,
        metavar="VALUE",
        help="values to try (0 is the unregularized row); defaults: "
        + "; ".join(
            f"{k}: {' '.join(f'{v:g}' for v in d)}"
            for k, (_, d, _) in SETTINGS.items()
        ),
    )
    distill = sub.add_parser(
        "distill",
        help="a large teacher, a small student trained alone, and the same "
        "student distilled from the teacher",
    )
    common(distill, 100, "keras-regularize-distill", 0.0)
    uncertainty = sub.add_parser(
        "uncertainty",
        help="MC dropout: accuracy against predictive entropy and the most "
        "uncertain digits",
    )
    common(uncertainty, 40, "keras-regularize-uncertainty", 0.0)
    uncertainty.add_argument(
        "--samples",
        type=_positive("--samples"),
        default=None,
        help="stochastic forward passes per input (default 30; 5 with --quick)",
    )
    return parser


SUBDEMOS = ("distill", "uncertainty")


def _ablate_values(parser, setting, texts):
    from keras_regularize._demo.ablate import SETTINGS

    technique, defaults, _ = SETTINGS[setting]
    if texts is None:
        return list(defaults)
    high = 1.0 if technique in ("dropout", "stochastic_depth") else None
    parse = _number(
        f"--values of {setting}", 0.0, high, high_open=high is not None
    )
    try:
        return [parse(t) for t in texts]
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument --values: {e}")


def main(argv=None):
    """Runs a command in this process, on the backend Keras already runs.

    The `keras-regularize` script and `python -m keras_regularize` reach
    this through `keras_regularize_cli.main`, which sets the backend first.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # `keras-regularize demo distill` is the same as `keras-regularize distill`.
    if argv[:1] == ["demo"] and argv[1:2] and argv[1] in SUBDEMOS + ("ablate",):
        argv = argv[1:]
    parser = _parser()
    args = parser.parse_args(argv)
    asked = getattr(args, "backend", None)
    other = keras_regularize_cli.backend_conflict(asked)
    if other is not None:
        parser.error(
            f"argument --backend: Keras already runs the {other!r} backend in "
            f"this process; run the command from a shell (`keras-regularize "
            f"... --backend {asked}`) to use another"
        )
    full = {"epochs": args.full_epochs, "seeds": 3, "samples": 30}
    for key in full:
        if getattr(args, key, False) is None:
            setattr(args, key, QUICK[key] if args.quick else full[key])
    if args.command == "demo":
        from keras_regularize._demo import overfitting

        overfitting.run(
            args.techniques, args.epochs, args.seeds, args.out, args.label_noise
        )
    elif args.command == "ablate":
        from keras_regularize._demo import ablate

        values = _ablate_values(parser, args.setting, args.values)
        ablate.run(
            args.setting,
            values,
            args.epochs,
            args.seeds,
            args.out,
            args.label_noise,
        )
    elif args.command == "distill":
        from keras_regularize._demo import distill

        distill.run(args.epochs, args.seeds, args.out, args.label_noise)
    elif args.command == "uncertainty":
        from keras_regularize._demo import uncertainty

        uncertainty.run(
            args.epochs, args.seeds, args.out, args.samples, args.label_noise
        )
    return 0


if __name__ == "__main__":
    # `python -m keras_regularize`: Keras was imported with the package, so
    # the launcher re-runs the command if `--backend` asks for another one.
    sys.exit(keras_regularize_cli.main())
