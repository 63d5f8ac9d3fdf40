"""The `keras-regularize` command line (also `python -m keras_regularize`).

The backend is chosen before this module is imported, by the launcher
`keras_regularize_cli` (the console script's entry point); `python -m
keras_regularize` hands over to the same launcher.
"""

import argparse
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


def _parser():
    from keras_regularize._demo.techniques import TECHNIQUES

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

    def common(p, epochs, out, seeds=1):
        p.add_argument("--backend", **backend)
        p.add_argument("--epochs", type=_positive("--epochs"), default=epochs)
        p.add_argument("--seeds", type=_positive("--seeds"), default=seeds)
        p.add_argument("--out", default=out, help="report folder")
        p.add_argument(
            "--quick",
            action="store_true",
            help="a few epochs, one seed: seconds, for smoke tests",
        )

    demo = sub.add_parser(
        "demo",
        help="an over-capacity network with and without each "
        "regularizer: table, report.md and plots",
    )
    common(demo, 60, "keras-regularize-report")

    def techniques(text):
        names = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in names if t not in TECHNIQUES]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown technique(s) {', '.join(unknown) or repr(text)}; "
                f"choose from {', '.join(TECHNIQUES)}"
            )
        return names

    demo.add_argument(
        "--techniques",
        type=techniques,
        default=list(TECHNIQUES),
        help="comma-separated subset of: " + ", ".join(TECHNIQUES),
    )
    distill = sub.add_parser(
        "distill",
        help="a large teacher, a small student trained alone, and the same "
        "student distilled from the teacher",
    )
    common(distill, 100, "keras-regularize-distill", seeds=3)
    uncertainty = sub.add_parser(
        "uncertainty",
        help="MC dropout: accuracy against predictive entropy and the most "
        "uncertain digits",
    )
    common(uncertainty, 40, "keras-regularize-uncertainty")
    uncertainty.add_argument(
        "--samples",
        type=_positive("--samples"),
        default=30,
        help="stochastic forward passes per input",
    )
    return parser


SUBDEMOS = ("distill", "uncertainty")


def main(argv=None):
    """Runs a command in this process, on the backend Keras already runs.

    The `keras-regularize` script and `python -m keras_regularize` reach
    this through `keras_regularize_cli.main`, which sets the backend first.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # `keras-regularize demo distill` is the same as `keras-regularize distill`.
    if argv[:1] == ["demo"] and argv[1:2] and argv[1] in SUBDEMOS:
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
    if args.quick:
        args.epochs, args.seeds = min(args.epochs, 3), 1
        if args.command == "uncertainty":
            args.samples = min(args.samples, 5)
    if args.command == "demo":
        from keras_regularize._demo import overfitting

        overfitting.run(args.techniques, args.epochs, args.seeds, args.out)
    elif args.command == "distill":
        from keras_regularize._demo import distill

        distill.run(args.epochs, args.seeds, args.out)
    elif args.command == "uncertainty":
        from keras_regularize._demo import uncertainty

        uncertainty.run(args.epochs, args.seeds, args.out, args.samples)
    return 0


if __name__ == "__main__":
    # `python -m keras_regularize`: Keras was imported with the package, so
    # the launcher re-runs the command if `--backend` asks for another one.
    sys.exit(keras_regularize_cli.main())
