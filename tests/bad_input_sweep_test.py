"""Bad-input sweep: every public constructor, callable and setter.

Each public symbol has a row in `ROWS` that names every argument of its
signature with a kind. A kind lists the values that must be refused with a
`ValueError` naming the argument and the value received. A new public
argument, symbol or setter without a row fails `test_every_argument_has_a_row`
or `test_every_setter_has_a_row`, so the sweep cannot fall behind the API.
"""

import inspect
import math

import keras
import numpy as np
import pytest

import keras_regularize as kr
from keras_regularize._export import EXPORTED

# The same on every backend: the nox sessions run it once (tests(tensorflow)).
pytestmark = pytest.mark.backend_independent

NAN = float("nan")
INF = float("inf")

# Values every numeric argument must refuse, whatever its range.
NON_NUMBERS = [NAN, INF, -INF, True, "1"]

RATE = [-0.1, 1.0, 1.5, *NON_NUMBERS, None]  # [0, 1)
PROB = [-0.1, 1.5, *NON_NUMBERS, None]  # [0, 1]
POSITIVE = [-1.0, 0.0, *NON_NUMBERS, None]  # (0, inf)
NONNEG = [-1.0, *NON_NUMBERS, None]  # [0, inf)
FINITE_OR_NONE = NON_NUMBERS
POSITIVE_OR_NONE = [-1.0, 0.0, *NON_NUMBERS]
PERCENTILE = [-1.0, 0.0, 100.5, *NON_NUMBERS, None]  # (0, 100]
POS_INT = [-1, 0, 1.5, *NON_NUMBERS, None]
POS_INT_OR_NONE = [-1, 0, 1.5, *NON_NUMBERS]
NONNEG_INT = [-1, 1.5, *NON_NUMBERS, None]
INT = [1.5, *NON_NUMBERS, None]
SEED = [-1, 1.5, *NON_NUMBERS]
BOOL = ["no", "", 1, 0, 1.0, None]
AXIS = ["a", 1.5, True, (1.5,), ("a",), (True,)]
MINMAX = [(0.5, 0.2), (0.0, 0.5), (0.2, INF), (NAN, 0.5), "ab", 0.5, True]
STAGES = [[-1, 5], [1.5, 2.5], "ab", [True, 3], [1, 1]]
NOISE_SHAPE = ["abc", 1.5, (1.5, 4), (True, 4), (-2, 4)]
MONITOR = [3, None, True, ""]
CHECKPOINT = [3, True, "best.txt"]
VERBOSE = [2, -1, True, "1", None]
MODEL = ["model", 3, None]
LAYER = ["layer", 3, None]
OPTIMIZER = ["no-such-optimizer", 3, None]
ARRAY = ["abc", None]


def choice(*allowed, none_ok=False):
    """Bad values for an argument taking one of `allowed` strings."""
    bad = ["bogus", "", True, 1]
    if not none_ok:
        bad.append(None)
    return [v for v in bad if v not in allowed or isinstance(v, bool)]


DATA_FORMAT = choice("channels_last", "channels_first", none_ok=True)


# "Not passed": lets a factory tell a default from an explicit None.
D = object()


class Exempt:
    """An argument the sweep does not try, with the reason why."""

    def __init__(self, reason):
        self.reason = reason


BASE_ARG = Exempt("Keras base argument, validated by Keras")


def _ablation_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return x[:16], y[:16], x[16:], y[16:]


def _ablation_builder(seed):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


RECORD = Exempt("a record `ablation` fills in; nothing to validate")


def _tiny_model(units=3):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8)(inputs))
    return keras.Model(inputs, keras.layers.Dense(units)(hidden))


def _mc_model():
    inputs = keras.Input((4,))
    hidden = kr.layers.MCDropout(0.5)(keras.layers.Dense(8)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def _x():
    return np.zeros((4, 4), "float32")


def _row(factory, **kinds):
    return {"factory": factory, "kinds": kinds}


L = "keras_regularize.layers."
ROWS = {
    L + "DropPath": _row(
        lambda **kw: kr.layers.DropPath(**kw),
        rate=RATE,
        mode=choice("row", "batch"),
        scale_by_keep=BOOL,
        seed=SEED,
    ),
    L + "StochasticDepth": _row(
        lambda **kw: kr.layers.StochasticDepth(**kw),
        rate=RATE,
        mode=choice("row", "batch"),
        scale_by_keep=BOOL,
        seed=SEED,
    ),
    L + "StochasticResidual": _row(
        lambda block=D, **kw: kr.layers.StochasticResidual(
            keras.layers.Dense(4) if block is D else block, **kw
        ),
        block=LAYER,
        rate=RATE,
        mode=choice("batch", "subset", "row"),
        scale_by_keep=BOOL,
        seed=SEED,
    ),
    L + "DropBlock2D": _row(
        lambda **kw: kr.layers.DropBlock2D(**kw),
        rate=RATE,
        block_size=POS_INT,
        data_format=DATA_FORMAT,
        seed=SEED,
    ),
    L + "MCDropout": _row(
        lambda rate=0.5, **kw: kr.layers.MCDropout(rate, **kw),
        rate=RATE,
        noise_shape=NOISE_SHAPE,
        seed=SEED,
    ),
    L + "WeightNoise": _row(
        lambda layer=D, stddev=0.1, **kw: kr.layers.WeightNoise(
            keras.layers.Dense(3) if layer is D else layer, stddev, **kw
        ),
        layer=LAYER,
        stddev=NONNEG,
        seed=SEED,
    ),
    L + "drop_path_rates": _row(
        lambda num_blocks=4, max_rate=0.2, **kw: kr.layers.drop_path_rates(
            num_blocks, max_rate, **kw
        ),
        num_blocks=NONNEG_INT,
        max_rate=RATE,
        stages=STAGES,
    ),
    L + "MixupLayer": _row(
        lambda **kw: kr.layers.MixupLayer(**kw),
        alpha=POSITIVE,
        num_classes=POS_INT_OR_NONE,
        label_smoothing=RATE,
        mode=choice("batch", "pair", "elem"),
        probability=PROB,
        seed=SEED,
    ),
    L + "CutMixLayer": _row(
        lambda **kw: kr.layers.CutMixLayer(**kw),
        alpha=POSITIVE,
        num_classes=POS_INT_OR_NONE,
        label_smoothing=RATE,
        mode=choice("batch", "pair", "elem"),
        probability=PROB,
        correct_lam=BOOL,
        minmax=MINMAX,
        data_format=DATA_FORMAT,
        seed=SEED,
    ),
    L + "RandomMix": _row(
        lambda **kw: kr.layers.RandomMix(**kw),
        mixup_alpha=POSITIVE,
        cutmix_alpha=POSITIVE,
        switch_prob=PROB,
        num_classes=POS_INT_OR_NONE,
        label_smoothing=RATE,
        mode=choice("batch", "pair", "elem"),
        probability=PROB,
        correct_lam=BOOL,
        minmax=MINMAX,
        data_format=DATA_FORMAT,
        seed=SEED,
    ),
    "keras_regularize.callbacks.EarlyStoppingRestore": _row(
        lambda **kw: kr.callbacks.EarlyStoppingRestore(**kw),
        monitor=MONITOR,
        mode=choice("auto", "min", "max"),
        patience=NONNEG_INT,
        min_delta=NONNEG,
        baseline=FINITE_OR_NONE,
        start_from_epoch=NONNEG_INT,
        restore_best=BOOL,
        restore_best_weights=BOOL,
        checkpoint_path=CHECKPOINT,
        save_optimizer=BOOL,
        stopping_threshold=FINITE_OR_NONE,
        divergence_threshold=FINITE_OR_NONE,
        check_finite=BOOL,
        strict=BOOL,
        verbose=VERBOSE,
    ),
    "keras_regularize.callbacks.ExponentialMovingAverage": _row(
        lambda **kw: kr.callbacks.ExponentialMovingAverage(**kw),
        decay=[0.0, 1.0, -0.1, 1.5, *NON_NUMBERS, None],  # (0, 1)
        warmup=BOOL,
        evaluate=BOOL,
        final=choice("averaged", "raw"),
        checkpoint_path=CHECKPOINT,
    ),
    "keras_regularize.callbacks.GradientNormLogger": _row(
        lambda **kw: kr.callbacks.GradientNormLogger(**kw),
        per_batch=BOOL,
    ),
    "keras_regularize.callbacks.StochasticWeightAveraging": _row(
        lambda **kw: kr.callbacks.StochasticWeightAveraging(
            **{"start_epoch": 0, **kw}
        ),
        start_epoch=NONNEG_INT,
        swa_lr=POSITIVE_OR_NONE,
        anneal_epochs=NONNEG_INT,
        anneal_strategy=choice("cos", "linear"),
        recalibration_data=["abc", True, 3.0],
        evaluate=BOOL,
        final=choice("averaged", "raw"),
        checkpoint_path=CHECKPOINT,
    ),
    "keras_regularize.constraints.MaxNorm": _row(
        lambda **kw: kr.constraints.MaxNorm(**kw),
        max_value=POSITIVE,
        axis=AXIS,
    ),
    "keras_regularize.constraints.apply_max_norm": _row(
        lambda model=D, **kw: kr.constraints.apply_max_norm(
            _tiny_model() if model is D else model, **kw
        ),
        model=MODEL,
        max_value=POSITIVE,
    ),
    "keras_regularize.regularizers.ElasticNet": _row(
        lambda **kw: kr.regularizers.ElasticNet(**kw),
        strength=NONNEG,
        l1_ratio=PROB,
    ),
    "keras_regularize.losses.DistillationLoss": _row(
        lambda **kw: kr.losses.DistillationLoss(**kw),
        temperature=POSITIVE,
        alpha=PROB,
        from_logits=BOOL,
    ),
    "keras_regularize.losses.SparseCategoricalCrossentropy": _row(
        lambda **kw: kr.losses.SparseCategoricalCrossentropy(**kw),
        label_smoothing=PROB,
        from_logits=BOOL,
        axis=INT,
        reduction=["bogus", 3, True],
        name=BASE_ARG,
        dtype=BASE_ARG,
    ),
    "keras_regularize.models.Distiller": _row(
        lambda student=D, teacher=D, **kw: kr.models.Distiller(
            student=_tiny_model() if student is D else student,
            teacher=_tiny_model() if teacher is D else teacher,
            **kw,
        ),
        student=MODEL,
        teacher=[*MODEL, []],
        temperature=POSITIVE,
        alpha=PROB,
        from_logits=BOOL,
        cache_teacher_outputs=BOOL,
    ),
    "keras_regularize.models.MixingModel": _row(
        lambda model=D, mixer=D, **kw: kr.models.MixingModel(
            _tiny_model() if model is D else model,
            kr.layers.MixupLayer(num_classes=3) if mixer is D else mixer,
            **kw,
        ),
        model=MODEL,
        mixer=[*LAYER, keras.layers.Dense(2)],
    ),
    "keras_regularize.models.mc_predict": _row(
        lambda model=D, x=D, samples=2, **kw: kr.models.mc_predict(
            _mc_model() if model is D else model,
            _x() if x is D else x,
            samples=samples,
            **kw,
        ),
        model=MODEL,
        x=["abc", None],
        samples=POS_INT,
        batch_size=POS_INT_OR_NONE,
        from_logits=BOOL,
        return_samples=BOOL,
        strategy=choice("auto", "tile", "tile_inputs", "loop"),
    ),
    # A result type (a named tuple): nothing to validate.
    "keras_regularize.models.MCPrediction": _row(
        lambda **kw: kr.models.MCPrediction(*[np.zeros(1)] * 4, **kw)
    ),
    "keras_regularize.models.with_mc_dropout": _row(
        lambda model=D, **kw: kr.models.with_mc_dropout(
            _tiny_model() if model is D else model, **kw
        ),
        model=MODEL,
        share_weights=BOOL,
    ),
    "keras_regularize.experiments.ablation": _row(
        lambda build_model=D, data=D, techniques=D, **kw: (
            kr.experiments.ablation(
                _ablation_builder if build_model is D else build_model,
                _ablation_data() if data is D else data,
                ["weight_decay"] if techniques is D else techniques,
                **{
                    "seeds": 1,
                    "epochs": 1,
                    "progress": False,
                    "run_eagerly": True,
                    **kw,
                },
            )
        ),
        build_model=MODEL,
        data=["abc", None, 3],
        techniques=["dropout", None, 3, []],
        seeds=[*POS_INT, [], [1, 1]],
        epochs=POS_INT,
        batch_size=POS_INT,
        optimizer=OPTIMIZER,
        learning_rate=POSITIVE,
        loss=[3, "mse"],
        from_logits=BOOL,
        run_eagerly=BOOL,
        progress=BOOL,
    ),
    "keras_regularize.experiments.AblationResult": _row(
        lambda **kw: kr.experiments.AblationResult(
            [], ["none"], {}, {}, [0], 1, 0, 0, **kw
        ),
        runs=RECORD,
        names=RECORD,
        labels=RECORD,
        components=RECORD,
        seeds=RECORD,
        epochs=RECORD,
        train_size=RECORD,
        val_size=RECORD,
    ),
    "keras_regularize.experiments.Trial": _row(
        lambda **kw: kr.experiments.Trial("x", 0, None, {}, {}, None, **kw),
        name=RECORD,
        seed=RECORD,
        network=RECORD,
        compile_args=RECORD,
        fit_args=RECORD,
        data=RECORD,
    ),
    "keras_regularize.models.add_regularization": _row(
        lambda model=D, **kw: kr.models.add_regularization(
            _tiny_model() if model is D else model, **kw
        ),
        model=MODEL,
        drop_path=RATE,
        drop_path_mode=choice("row", "skip"),
        head_dropout=RATE,
        seed=SEED,
    ),
    "keras_regularize.models.SharpnessAwareMinimization": _row(
        lambda model=D, **kw: kr.models.SharpnessAwareMinimization(
            _tiny_model() if model is D else model, **kw
        ),
        model=[*MODEL, keras.layers.Dense],
        rho=NONNEG,
        adaptive=BOOL,
        eta=NONNEG,
        every=POS_INT,
    ),
    "keras_regularize.optimizers.GradientClipping": _row(
        lambda optimizer=D, threshold=1.0, **kw: kr.optimizers.GradientClipping(
            keras.optimizers.SGD() if optimizer is D else optimizer,
            threshold=threshold,
            **kw,
        ),
        optimizer=OPTIMIZER,
        method=choice("global_norm", "value", "agc", "auto", "none"),
        threshold=POSITIVE_OR_NONE,
        percentile=PERCENTILE,
        history_size=POS_INT,
        epsilon=POSITIVE,
        name=BASE_ARG,
    ),
    "keras_regularize.optimizers.GradientNoise": _row(
        lambda optimizer=D, **kw: kr.optimizers.GradientNoise(
            keras.optimizers.SGD() if optimizer is D else optimizer, **kw
        ),
        optimizer=OPTIMIZER,
        eta=NONNEG,
        gamma=NONNEG,
        seed=SEED,
        name=BASE_ARG,
    ),
}

# Run-time setters: (row, attribute, bad values).
SETTERS = [
    (L + "DropPath", "rate", RATE),
    (L + "StochasticDepth", "rate", RATE),
    (L + "StochasticResidual", "rate", RATE),
    (L + "DropBlock2D", "rate", RATE),
    (L + "WeightNoise", "stddev", NONNEG),
    (L + "MixupLayer", "alpha", POSITIVE),
    (L + "MixupLayer", "probability", PROB),
    (L + "CutMixLayer", "alpha", POSITIVE),
    (L + "CutMixLayer", "probability", PROB),
    (L + "RandomMix", "mixup_alpha", POSITIVE),
    (L + "RandomMix", "cutmix_alpha", POSITIVE),
    (L + "RandomMix", "switch_prob", PROB),
    (L + "RandomMix", "probability", PROB),
    ("keras_regularize.models.Distiller", "temperature", POSITIVE),
    ("keras_regularize.models.Distiller", "alpha", PROB),
    ("keras_regularize.models.SharpnessAwareMinimization", "rho", NONNEG),
    ("keras_regularize.models.SharpnessAwareMinimization", "eta", NONNEG),
    ("keras_regularize.optimizers.GradientNoise", "eta", NONNEG),
    ("keras_regularize.optimizers.GradientClipping", "threshold", POSITIVE),
    (
        "keras_regularize.optimizers.GradientClipping",
        "gradient_accumulation_steps",
        [*POS_INT_OR_NONE, 1],
    ),
    (
        "keras_regularize.optimizers.GradientNoise",
        "gradient_accumulation_steps",
        [*POS_INT_OR_NONE, 1],
    ),
    ("keras_regularize.callbacks.EarlyStoppingRestore", "restore_best", BOOL),
]

# Setters that are not hyperparameters, with the reason.
SETTERS_EXEMPT = {
    ("keras_regularize.layers.MCDropout", "rate"): "refuses every change",
    ("keras_regularize.optimizers.GradientClipping", "learning_rate"): (
        "forwarded to the inner Keras optimizer, which validates it"
    ),
    ("keras_regularize.optimizers.GradientNoise", "learning_rate"): (
        "forwarded to the inner Keras optimizer, which validates it"
    ),
}


def _params(symbol):
    """The arguments of a function, or of a class's constructor.

    A constructor that passes `**kwargs` to a base class of the package
    takes that base's arguments too, so they are followed up the MRO until
    a base outside the package (Keras's `**kwargs`: name, dtype, ...).
    """
    if not isinstance(symbol, type):
        targets = [symbol]
    else:
        targets = []
        for cls in symbol.__mro__:
            if not cls.__module__.startswith("keras_regularize"):
                break
            if "__init__" not in vars(cls):
                continue
            targets.append(cls.__init__)
            kinds = [
                p.kind
                for p in inspect.signature(cls.__init__).parameters.values()
            ]
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                break
    names = []
    for target in targets:
        for p in inspect.signature(target).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.name not in names:
                names.append(p.name)
    return names


def _assert_refused(call, name, value):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    named = (f"`{name}`", f"`{name}[", f"{name}=")
    assert any(n in message for n in named), (
        f"error for {name}={value!r} does not name the argument: {message}"
    )
    # Objects of the wrong type may be shown by their type's name.
    shown = {repr(value), str(value), repr(type(value).__name__)}
    if isinstance(value, float) and math.isnan(value):
        shown.add("nan")
    assert any(s in message for s in shown), (
        f"error for {name}={value!r} does not show the value: {message}"
    )


def test_every_argument_has_a_row():
    missing = []
    for path, symbol in EXPORTED.items():
        if path not in ROWS:
            missing.append(path)
            continue
        kinds = ROWS[path]["kinds"]
        missing += [f"{path}({p})" for p in _params(symbol) if p not in kinds]
        stale = [k for k in kinds if k not in _params(symbol)]
        assert not stale, f"{path}: rows for arguments it lacks: {stale}"
    assert not missing, f"public arguments with no sweep row: {missing}"


def test_every_setter_has_a_row():
    listed = {(p, a) for p, a, _ in SETTERS} | set(SETTERS_EXEMPT)
    missing = []
    for path, symbol in EXPORTED.items():
        if not isinstance(symbol, type):
            continue
        for klass in symbol.__mro__:
            if not klass.__module__.startswith("keras_regularize"):
                continue
            for attr, value in vars(klass).items():
                if isinstance(value, property) and value.fset is not None:
                    if (path, attr) not in listed:
                        missing.append(f"{path}.{attr}")
    assert not missing, f"public setters with no sweep row: {missing}"


CASES = [
    pytest.param(path, name, id=f"{path.rsplit('.', 1)[1]}-{name}")
    for path, row in ROWS.items()
    for name, kind in row["kinds"].items()
    if not isinstance(kind, Exempt)
]


@pytest.mark.parametrize("path,name", CASES)
def test_bad_argument_is_refused_with_its_name_and_value(path, name):
    row = ROWS[path]
    row["factory"]()  # the defaults are valid
    for value in row["kinds"][name]:
        _assert_refused(
            lambda v=value: row["factory"](**{name: v}), name, value
        )


@pytest.mark.parametrize(
    "path,attr,bad",
    [
        pytest.param(p, a, b, id=f"{p.rsplit('.', 1)[1]}-{a}")
        for p, a, b in SETTERS
    ],
)
def test_bad_setter_value_is_refused_and_keeps_the_old_one(path, attr, bad):
    obj = ROWS[path]["factory"]()
    before = getattr(obj, attr)
    for value in bad:
        _assert_refused(lambda v=value: setattr(obj, attr, v), attr, value)
        assert getattr(obj, attr) == before
