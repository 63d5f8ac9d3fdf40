"""One training run of an ablation study, as a technique sees it."""

from keras_regularize._export import export


@export("keras_regularize.experiments.Trial")
class Trial:
    """One training run of `ablation`: what a technique may change.

    `ablation` builds the network with `build_model`, fills a `Trial` with
    the run's compile and fit arguments, hands it to every technique of the
    row in turn, then calls `trial.model.compile(**trial.compile_args)` and
    `trial.model.fit(x_train, y_train, **trial.fit_args)`, and evaluates
    `trial.network`. A user-supplied technique is a function
    `technique(trial)` that changes these attributes in place (its return
    value is ignored):

    - `trial.model`: the model `fit` trains. It starts as the network; a
      technique may replace it with a wrapper (as `"mixup"` puts a
      `keras_regularize.models.MixingModel` around it and `"sam"` a
      `SharpnessAwareMinimization`), which must keep training
      `trial.network`'s weights.
    - `trial.compile_args`: keyword arguments of `compile` (`optimizer`, a
      fresh optimizer instance per run; `loss`; `metrics`, which must keep
      `"accuracy"` for the curves).
    - `trial.fit_args`: keyword arguments of `fit` (`batch_size`, `epochs`,
      `validation_data`, `callbacks`, a list to append to, `verbose`).
    - `trial.measures`: a dict of name to `function(network) -> float`,
      called after training; each name becomes a column of the table (as
      `"max_norm"` reports its "units at cap").

    Read-only by convention: `trial.network` (the model `build_model`
    returned, evaluated after `fit`), `trial.name` (the row), `trial.seed`,
    `trial.epochs` and `trial.data` (`(x_train, y_train, x_val, y_val)`).

    Args:
        name: The row's name.
        seed: Int, the run's seed.
        network: The model `build_model` returned.
        compile_args: Dict of `compile` arguments.
        fit_args: Dict of `fit` arguments.
        data: `(x_train, y_train, x_val, y_val)`.

    Example:

    >>> def sgd(trial):
    ...     trial.compile_args["optimizer"] = keras.optimizers.SGD(0.1)
    >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    >>> trial = keras_regularize.experiments.Trial(
    ...     "sgd", 0, net, {"optimizer": "adam"}, {"callbacks": []}, None)
    >>> sgd(trial)
    >>> type(trial.compile_args["optimizer"]).__name__
    'SGD'
    """

    def __init__(self, name, seed, network, compile_args, fit_args, data):
        self.name = name
        self.seed = seed
        self.network = network
        self.model = network
        self.compile_args = compile_args
        self.fit_args = fit_args
        self.data = data
        self.measures = {}

    @property
    def epochs(self):
        """The number of epochs `fit` will run at most."""
        return self.fit_args.get("epochs")

    def __repr__(self):
        return f"Trial(name={self.name!r}, seed={self.seed})"
