"""The `keras-regularize` command line (also `python -m keras_regularize`)."""

import argparse
import sys

from keras_regularize._cli_env import FRAMEWORKS


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
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, epochs, out, seeds=1):
        p.add_argument(
            "--backend",
            choices=list(FRAMEWORKS),
            help="Keras backend, set before Keras is imported",
        )
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
    argv = list(sys.argv[1:] if argv is None else argv)
    # `keras-regularize demo distill` is the same as `keras-regularize distill`.
    if argv[:1] == ["demo"] and argv[1:2] and argv[1] in SUBDEMOS:
        argv = argv[1:]
    args = _parser().parse_args(argv)
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
    sys.exit(main())
