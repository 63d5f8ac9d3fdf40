"""`ablation`: each technique against no regularization, seed by seed."""

import inspect
import time

import keras
import numpy as np

from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize._validation import fail_shape
from keras_regularize.experiments import _techniques
from keras_regularize.experiments._progress import StudyProgress
from keras_regularize.experiments.ablation_result import AblationResult
from keras_regularize.experiments.trial import Trial

BASELINE = "none"


def _check_seeds(seeds):
    if isinstance(seeds, (list, tuple)):
        if not seeds:
            fail("seeds", "an int >= 1 or a non-empty list of seeds", seeds)
        out = [check_int("seeds", s, 0) for s in seeds]
        if len(set(out)) != len(out):
            fail("seeds", "distinct seeds", seeds)
        return out
    return list(range(check_int("seeds", seeds, 1)))


def _array(name, value):
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - anything that is not array-like
        fail(name, "an array", value)


def _check_data(data):
    if not isinstance(data, (list, tuple)) or len(data) != 4:
        fail(
            "data",
            "a tuple (x_train, y_train, x_val, y_val) of NumPy arrays",
            data if not isinstance(data, (list, tuple)) else type(data),
        )
    names = ("x_train", "y_train", "x_val", "y_val")
    x_train, y_train, x_val, y_val = (_array(n, v) for n, v in zip(names, data))
    for name, x in (("x_train", x_train), ("x_val", x_val)):
        if x.ndim < 2 or x.shape[0] == 0:
            fail_shape(name, "a non-empty batch (rank >= 2)", x.shape)
        if not np.issubdtype(x.dtype, np.floating):
            fail(name, "floating-point inputs (cast them first)", x.dtype)
        if not np.all(np.isfinite(x)):
            fail(name, "finite inputs", "an array with NaN or inf")
    if x_train.shape[1:] != x_val.shape[1:]:
        expected = f"samples of shape {x_train.shape[1:]}"
        fail_shape("x_val", expected, x_val.shape)
    for name, y, x in (("y_train", y_train, x_train), ("y_val", y_val, x_val)):
        if y.shape != (x.shape[0],):
            fail_shape(
                name, f"integer class ids, shape ({x.shape[0]},)", y.shape
            )
        if not np.issubdtype(y.dtype, np.integer):
            fail(name, "integer class ids", y.dtype)
    return (x_train.astype("float32"), y_train, x_val.astype("float32"), y_val)


def _check_labels(network, data):
    classes = int(network.output_shape[-1])
    for name, y in (("y_train", data[1]), ("y_val", data[3])):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            fail(
                name,
                f"class ids in [0, {classes}) for a model with {classes} "
                "outputs",
                f"ids from {low} to {high}",
            )


def _rows(techniques):
    """`{row name: [parts]}`, "none" first, in the order given."""
    if isinstance(techniques, dict):
        items = list(techniques.items())
    elif isinstance(techniques, (list, tuple)):
        items = []
        for spec in techniques:
            if isinstance(spec, str):
                items.append((spec.strip(), spec))
            elif callable(spec):
                items.append((getattr(spec, "__name__", repr(spec)), spec))
            else:
                fail(
                    "techniques",
                    "names, functions of a `Trial`, or a dict of row name to "
                    "those (or to lists of them, a combination)",
                    spec,
                )
    else:
        fail(
            "techniques",
            "a list of technique names or functions, or a dict of row "
            "names to them",
            techniques,
        )
    rows = {BASELINE: []}
    for name, spec in items:
        if not isinstance(name, str) or not name:
            fail("techniques", "non-empty string row names", name)
        if name == BASELINE or spec == BASELINE:
            continue
        if name in rows:
            fail("techniques", "distinct row names", name)
        rows[name] = _techniques.parse_row(spec)
    if len(rows) == 1:
        fail("techniques", "at least one technique besides 'none'", techniques)
    return rows


def _check_builder(build_model, rows):
    if not callable(build_model):
        fail("build_model", "a function seed=... -> keras.Model", build_model)
    try:
        params = inspect.signature(build_model).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    needed = {"seed"}
    for parts in rows.values():
        needed |= set(_techniques.build_kwargs(parts))
    missing = sorted(needed - set(params))
    if missing:
        fail(
            "build_model",
            f"a function accepting the keyword argument(s) "
            f"{', '.join(missing)} (the techniques asked for pass them)",
            build_model,
        )


def _optimizer_factory(optimizer, learning_rate):
    if isinstance(optimizer, str):

        def make():
            made = keras.optimizers.get(optimizer)
            made.learning_rate = learning_rate
            return made

        try:
            make()  # an unknown name fails now, not after training
        except ValueError:
            fail("optimizer", "a Keras optimizer name ('adam')", optimizer)
        return make
    if callable(optimizer) and not isinstance(
        optimizer, keras.optimizers.Optimizer
    ):
        return optimizer
    fail(
        "optimizer",
        "an optimizer name or a function returning a fresh optimizer "
        "(one optimizer cannot train several models)",
        optimizer,
    )


def _cross_entropy(outputs, y, from_logits):
    outputs = np.asarray(outputs, dtype="float64")
    if from_logits:
        outputs = outputs - outputs.max(axis=-1, keepdims=True)
        log_p = outputs - np.log(np.exp(outputs).sum(axis=-1, keepdims=True))
    else:
        log_p = np.log(np.clip(outputs, 1e-12, 1.0))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def _predict(network, x, batch_size):
    """`network.predict` in batches of one shape (the last one padded).

    Each new batch shape costs a compilation of the predict function; on
    small data that compilation costs more than the prediction.
    """
    pad = -len(x) % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    outputs = network.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(outputs)[: len(x) - pad]


def _scores(outputs, y, from_logits):
    accuracy = float(np.mean(np.argmax(outputs, axis=-1) == y))
    return accuracy, _cross_entropy(outputs, y, from_logits)


def _run(name, parts, seed, settings, data, progress):
    x_train, y_train, x_val, y_val = data
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    network = settings["build_model"](
        seed=seed, **_techniques.build_kwargs(parts)
    )
    if not isinstance(network, keras.Model):
        fail("build_model", "a function returning a keras.Model", network)
    _techniques.check_built(parts, network)
    _check_labels(network, data)
    trial = Trial(
        name,
        seed,
        network,
        {
            "optimizer": settings["optimizer"](),
            "loss": settings["loss"],
            "metrics": ["accuracy"],
            "run_eagerly": settings["run_eagerly"],
        },
        {
            "epochs": settings["epochs"],
            "batch_size": settings["batch_size"],
            "validation_data": (x_val, y_val),
            "validation_batch_size": settings["eval_batch_size"],
            "callbacks": [],
            "verbose": 0,
        },
        data,
    )
    for part in parts:
        part.apply(trial)
    trial.fit_args["callbacks"].append(progress.callback())
    progress.begin_run(f"{name} | seed {seed}", trial.fit_args["epochs"])
    trial.model.compile(**trial.compile_args)
    start = time.perf_counter()
    history = trial.model.fit(x_train, y_train, **trial.fit_args)
    seconds = time.perf_counter() - start
    progress.end_run()
    outputs = _predict(
        network,
        np.concatenate([x_train, x_val]),
        settings["eval_batch_size"],
    )
    logits = settings["from_logits"]
    train_acc, train_loss = _scores(outputs[: len(x_train)], y_train, logits)
    val_acc, val_loss = _scores(outputs[len(x_train) :], y_val, logits)
    curves = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    watched = curves.get("val_loss") or [np.nan]
    return {
        "technique": name,
        "seed": seed,
        "train_acc": train_acc,
        "val_acc": val_acc,
        "gap": train_acc - val_acc,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "best_epoch": int(np.nanargmin(watched)) + 1,
        "epochs_run": len(curves.get("loss", [])),
        "seconds": seconds,
        "measures": {k: float(f(network)) for k, f in trial.measures.items()},
        "history": curves,
    }


@export("keras_regularize.experiments.ablation")
def ablation(
    build_model,
    data,
    techniques,
    *,
    seeds=3,
    epochs=30,
    batch_size=64,
    optimizer="adam",
    learning_rate=1e-3,
    loss=None,
    from_logits=True,
    run_eagerly=False,
    progress=True,
):
    """Trains a model with each technique and without, on the same seeds.

    The validation recipe of an ablation study, on your model and data:
    every row of `techniques`, and a baseline row `"none"` (no
    regularization), is trained once per seed with the same seeds, the same
    split and the same budget, so that each technique's effect is measured
    as a paired difference against `"none"` seed by seed. Before each run
    the session is cleared and `keras.utils.set_random_seed(seed)` is
    called, so the rows of one seed start from the same initial weights
    whenever the technique leaves the architecture alone.

    After `fit`, the network `build_model` returned is evaluated on both
    splits: accuracy, and cross-entropy without label smoothing (so rows
    trained with different losses compare). `best epoch` is the epoch of
    the lowest validation loss logged by `fit`; `seconds` is the time
    `fit` took. Training accuracy is measured on `y_train` as given (with
    noisy labels, how much of the noise the model memorized).

    Named techniques, each `"name"` (the default in brackets) or
    `"name=value"`:

    - `"dropout"` [0.5], `"stochastic_depth"` [0.2]: passed to `build_model`
      as `dropout=...` / `stochastic_depth=...` (only your builder knows
      where the layers go; use `keras_regularize.layers.StochasticResidual`
      or `DropPath` with `drop_path_rates(blocks, value)`). A model
      without such a layer is refused.
    - `"drop_path"` [0.2]: `keras_regularize.models.add_regularization(
      network, drop_path=value)`: a `DropPath` on the branch of every
      residual merge of your model, rates rising linearly from 0 to
      `value`. A model with fewer than two merges is refused (its only
      rate would be 0).
    - `"max_norm"` [3.0]: `keras_regularize.constraints.apply_max_norm`;
      the table reports the share of units at the cap after training.
    - `"weight_decay"` [0.01]: the optimizer's decoupled `weight_decay`.
    - `"label_smoothing"` [0.1]: the loss's `label_smoothing`.
    - `"early_stopping"` [10]: `keras_regularize.callbacks.
      EarlyStoppingRestore(monitor="val_loss", patience=value)`.
    - `"ema"` [0.999]: `callbacks.ExponentialMovingAverage(decay=value)`.
    - `"swa"` [0.75]: `callbacks.StochasticWeightAveraging`, averaging
      the epochs from this fraction of `epochs` on.
    - `"mixup"` [0.2]: `models.MixingModel` with `layers.MixupLayer(alpha=
      value)`.
    - `"sam"` [0.05]: `models.SharpnessAwareMinimization(rho=value)`.

    A user-supplied technique is a function `technique(trial)` that changes
    the run's model, compile and fit arguments in place (see
    `keras_regularize.experiments.Trial`). A row may combine several
    techniques: a list of names and functions, applied in the order of the
    list above, user functions last.

    Args:
        build_model: Function `build_model(seed=..., **kwargs) -> keras.
            Model`, returning a fresh, uncompiled classifier (one output per
            class) each time. It receives `dropout=` or
            `stochastic_depth=` when a row asks for them.
        data: `(x_train, y_train, x_val, y_val)`: float inputs and integer
            class ids, the same split for every run.
        techniques: A list of rows, each a technique name or function, or a
            dict of row name to a name, a function or a list of them (a
            combination). `"none"` is always added first.
        seeds: Int `n` (seeds `0 .. n-1`) or a list of distinct
            non-negative ints. Defaults to `3`.
        epochs: Int >= 1, epochs per run. Defaults to `30`.
        batch_size: Int >= 1. Defaults to `64`.
        optimizer: An optimizer name (created with `learning_rate`), or a
            function returning a fresh optimizer. Defaults to `"adam"`.
        learning_rate: Float > 0, for a named optimizer. Defaults to `1e-3`.
        loss: Optional Keras loss; defaults to `keras_regularize.losses.
            SparseCategoricalCrossentropy(from_logits=from_logits)`.
        from_logits: Bool, whether the model outputs logits (else
            probabilities). Defaults to `True`.
        run_eagerly: Bool, passed to `compile`. `True` skips compiling the
            steps, which is cheaper for a tiny model trained for a few
            steps (a doctest, a smoke test). Defaults to `False`.
        progress: Bool, whether to draw one progress bar over the whole
            study on stderr (technique, seed, ETA). Defaults to `True`.

    Returns:
        A `keras_regularize.experiments.AblationResult`: the runs, the table
        of mean ± std, the paired effects and `report(path)`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(48, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> def build(seed, dropout=0.0):
    ...     return keras.Sequential([
    ...         keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...         keras.layers.Dropout(dropout), keras.layers.Dense(2)])
    >>> result = keras_regularize.experiments.ablation(
    ...     build, (x[:32], y[:32], x[32:], y[32:]), ["dropout=0.3"],
    ...     seeds=2, epochs=1, run_eagerly=True, progress=False)
    >>> result.names
    ['none', 'dropout=0.3']
    >>> sorted(result.effects()["dropout=0.3"])
    ['mean', 'n', 'se', 'significant']

    References:
        - [Srivastava et al., 2014](https://jmlr.org/papers/v15/srivastava14a.html)
        - [Bouthillier et al., 2021](https://arxiv.org/abs/2103.03098)
    """
    rows = _rows(techniques)
    _check_builder(build_model, rows)
    data = _check_data(data)
    seeds = _check_seeds(seeds)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    learning_rate = check_number(
        "learning_rate", learning_rate, 0.0, low_open=True
    )
    from_logits = check_bool("from_logits", from_logits)
    progress = check_bool("progress", progress)
    run_eagerly = check_bool("run_eagerly", run_eagerly)
    if loss is None:
        from keras_regularize.losses import SparseCategoricalCrossentropy

        loss = SparseCategoricalCrossentropy(from_logits=from_logits)
    elif not callable(loss):
        fail("loss", "a Keras loss (a callable)", loss)
    settings = {
        "build_model": build_model,
        "optimizer": _optimizer_factory(optimizer, learning_rate),
        "loss": loss,
        "epochs": epochs,
        "batch_size": batch_size,
        # The whole validation split in one batch where it fits: one
        # compiled shape for validation and one for prediction.
        "eval_batch_size": min(len(data[2]), 2048),
        "from_logits": from_logits,
        "run_eagerly": run_eagerly,
    }
    bar = StudyProgress(len(rows) * len(seeds) * epochs, enabled=progress)
    runs = []
    try:
        for seed in seeds:
            for name, parts in rows.items():
                runs.append(_run(name, parts, seed, settings, data, bar))
    finally:
        bar.close()
    labels = {
        name: ", ".join(p.label for p in parts) or "no regularization"
        for name, parts in rows.items()
    }
    components = {name: [p.name for p in parts] for name, parts in rows.items()}
    return AblationResult(
        runs,
        names=list(rows),
        labels=labels,
        components=components,
        seeds=seeds,
        epochs=epochs,
        train_size=len(data[0]),
        val_size=len(data[2]),
    )
