"""Tests for keras_regularize.models.SharpnessAwareMinimization."""

import keras
import numpy as np
import pytest

from keras_regularize import _backend
from keras_regularize.layers import MixupLayer
from keras_regularize.models import Distiller
from keras_regularize.models import MixingModel
from keras_regularize.models.sharpness_aware_minimization import (
    SharpnessAwareMinimization as SAM,
)
from keras_regularize.optimizers import GradientClipping
from keras_regularize.optimizers import GradientNoise
from tests.harness import BACKEND
from tests.harness import assert_error_names_value
from tests.harness import to_numpy

B, D, OUT = 8, 3, 2
LR = 0.1


def _batch(n=B, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    y = rng.normal(size=(n, OUT)).astype("float32")
    return x, y


def linear(units=OUT, seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(units, bias_initializer="random_normal"),
        ]
    )


def weights(model):
    return [np.array(to_numpy(w), dtype="float64") for w in model.weights]


# -- NumPy reference: SAM / ASAM on y = x W + b with mean squared error -----


def mse_grads(w, b, x, y, weight=None):
    """Gradients of Keras's weighted MSE, `sum_i weight_i * l_i / batch`
    with `l_i = mean_o (x W + b - y)^2`."""
    n, o = y.shape
    weight = np.ones(n) if weight is None else weight
    r = (x @ w + b - y) * (2.0 / (n * o)) * weight[:, None]
    return [x.T @ r, r.sum(axis=0)]


def sam_grads(params, grads_fn, rho, adaptive=False, eta=0.01):
    g = grads_fn(*params)
    if adaptive:
        t = [np.abs(p) + eta for p in params]
        norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
        e = [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]
    else:
        norm = np.sqrt(sum(np.sum(gi**2) for gi in g))
        e = [rho * gi / norm for gi in g]
    return grads_fn(*[p + ei for p, ei in zip(params, e)])


@pytest.mark.parametrize("variant", ["sam", "asam", "sam_loss_scaled"])
def test_one_sgd_step_matches_numpy(variant):
    x, y = _batch()
    inner = linear()
    w0 = weights(inner)
    adaptive = variant == "asam"
    rho = 0.5 if adaptive else 0.1
    model = SAM(inner, rho=rho, adaptive=adaptive, eta=0.05)
    optimizer = keras.optimizers.SGD(LR)
    if variant == "sam_loss_scaled":
        # 2**100 squared overflows float32: only a norm taken after
        # unscaling gives the right perturbation.
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer, initial_scale=2.0**100
        )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    g = sam_grads(
        w0, lambda w, b: mse_grads(w, b, x, y), rho, adaptive, eta=0.05
    )
    expected = [p - LR * gi for p, gi in zip(w0, g)]
    for got, want in zip(weights(inner), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = [p - LR * gi for p, gi in zip(w0, mse_grads(*w0, x, y))]
    assert np.abs(weights(inner)[0] - plain[0]).max() > 1e-4


def test_every_k_is_sam_then_plain_steps_in_a_compiled_step():
    x, y = _batch(4 * B)
    inner = linear()
    params = weights(inner)
    model = SAM(inner, rho=0.2, every=3)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for step in range(4):
        xs, ys = x[step * B : (step + 1) * B], y[step * B : (step + 1) * B]

        def grads_fn(w, b, xs=xs, ys=ys):
            return mse_grads(w, b, xs, ys)

        if step % 3 == 0:
            g = sam_grads(params, grads_fn, 0.2)
        else:
            g = grads_fn(*params)
        params = [p - LR * gi for p, gi in zip(params, g)]
    for got, want in zip(weights(inner), params):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(to_numpy(model.step_counter)) == 1


def _bn_model(seed=2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Dropout(0.3, seed=seed),
            keras.layers.Dense(OUT),
        ]
    )


def _fit(model, x, y, epochs=1, loss="mse", **compile_kwargs):
    model.compile(
        optimizer=keras.optimizers.SGD(LR), loss=loss, **compile_kwargs
    )
    return model.fit(
        x, y, batch_size=B, epochs=epochs, shuffle=False, verbose=0
    )


def _moving_mean(model):
    bn = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    return np.array(to_numpy(bn.moving_mean))


# torch.compile takes minutes on this model: slow there (eager in CI).
JIT = [
    pytest.param(True, marks=pytest.mark.slow) if BACKEND == "torch" else True
]
if BACKEND == "torch":
    JIT.append(False)


@pytest.mark.parametrize("jit", JIT)
def test_rho_zero_equals_plain_training_with_jit_compile(jit):
    x, y = _batch(2 * B)
    plain = _bn_model()
    sam = SAM(_bn_model(), rho=0.0)
    history = _fit(plain, x, y, epochs=2, metrics=["mae"], jit_compile=jit)
    sam_history = _fit(sam, x, y, epochs=2, metrics=["mae"], jit_compile=jit)
    for key in ("loss", "mae"):
        np.testing.assert_allclose(
            sam_history.history[key], history.history[key], rtol=1e-6
        )
    for got, want in zip(weights(sam.model), weights(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_batch_norm_statistics_come_from_the_first_pass_only():
    x, y = _batch()
    plain, inner = _bn_model(), _bn_model()
    _fit(plain, x, y)
    sam = SAM(inner, rho=1.0)
    _fit(sam, x, y)
    # The plain step's forward pass ran at the same weights on the same
    # batch: the moving mean is the one of the first pass.
    np.testing.assert_allclose(
        _moving_mean(inner), _moving_mean(plain), rtol=1e-6, atol=1e-7
    )
    assert np.abs(_moving_mean(inner)).max() > 1e-3
    assert np.abs(weights(inner)[0] - weights(plain)[0]).max() > 1e-4


def _exp_model(policy):
    return keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(
                1,
                activation="exponential",
                use_bias=False,
                kernel_initializer="ones",
                dtype=policy,
            ),
        ]
    )


@pytest.mark.parametrize(
    "case", ["first_overflows", "second_overflows", "bfloat16"]
)
def test_mixed_precision_skips_non_finite_steps(case):
    # exp(12) and exp(5 * 3) overflow float16, exp(5) does not: at x = 5
    # only the perturbed pass (w = 1 + rho = 3) overflows.
    value = 12.0 if case == "first_overflows" else 5.0
    policy = "mixed_bfloat16" if case == "bfloat16" else "mixed_float16"
    x = np.full((B, 1), value, "float32")
    y = np.zeros((B, 1), "float32")
    inner = _exp_model(policy)
    sam = SAM(inner, rho=2.0)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(1e-6), initial_scale=1.0
    )
    sam.compile(optimizer=optimizer, loss="mae")
    sam.fit(x, y, batch_size=B, epochs=1, verbose=0)
    kernel = weights(inner)[0]
    assert np.all(np.isfinite(kernel))
    scale = float(to_numpy(optimizer.dynamic_scale))
    if case == "bfloat16":
        # bfloat16 has float32's range: a normal SAM step.
        assert kernel[0, 0] < 1.0 and scale == 1.0
    else:
        assert kernel[0, 0] == 1.0  # skipped
        assert scale == 0.5  # as LossScaleOptimizer does


def test_mixing_model_passes_see_the_same_mixed_batch_and_targets():
    x, y = _batch()
    mixer = MixupLayer(alpha=0.4, seed=3)
    inner = linear()
    w0 = weights(inner)
    sam = SAM(MixingModel(inner, mixer), rho=0.3)
    _fit(sam, x, y)
    # The draws of the step, replayed on a copy of the mixer.
    mixed, lam, partner = MixupLayer(alpha=0.4, seed=3).mix_images(x)
    mixed, lam = np.asarray(to_numpy(mixed)), np.asarray(to_numpy(lam))
    partner = np.asarray(to_numpy(partner))

    def grads_fn(w, b):
        own = mse_grads(w, b, mixed, y, lam)
        other = mse_grads(w, b, mixed, y[partner], 1.0 - lam)
        return [a + c for a, c in zip(own, other)]

    g = sam_grads(w0, grads_fn, 0.3)
    for got, p, gi in zip(weights(inner), w0, g):
        np.testing.assert_allclose(got, p - LR * gi, rtol=1e-5, atol=1e-6)


class CallCounter(keras.layers.Layer):
    """Identity that counts its Python calls (eager steps: one per run)."""

    calls = 0

    def call(self, x):
        type(self).calls += 1
        return x


def _distiller(seed):
    keras.utils.set_random_seed(seed)
    teacher = keras.Sequential(
        [keras.Input((D,)), CallCounter(), keras.layers.Dense(3)]
    )
    student = keras.Sequential([keras.Input((D,)), keras.layers.Dense(3)])
    return Distiller(student=student, teacher=teacher, alpha=0.5)


def test_distiller_teacher_runs_once_per_step():
    x, _ = _batch()
    y = np.arange(B) % 3
    counts, results = [], []
    for wrap in (False, True):
        model = _distiller(seed=4)
        if wrap:
            model = SAM(model, rho=0.0)
        CallCounter.calls = 0
        history = _fit(
            model, x, y, loss=None, metrics=["accuracy"], run_eagerly=True
        )
        counts.append(CallCounter.calls)
        student = model.model.student if wrap else model.student
        results.append((history.history, weights(student)))
    assert counts[1] == counts[0] == 1  # one step, one teacher run
    assert sorted(results[1][0]) == sorted(results[0][0])
    for key in results[0][0]:
        np.testing.assert_allclose(
            results[1][0][key], results[0][0][key], rtol=1e-6
        )
    for got, want in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("wrapper", ["clipping", "noise"])
def test_optimizer_wrappers_act_on_the_final_gradient(wrapper):
    x, y = _batch()
    inner = linear()
    w0 = weights(inner)
    if wrapper == "clipping":
        optimizer = GradientClipping(keras.optimizers.SGD(LR), threshold=0.05)
    else:
        optimizer = GradientNoise(keras.optimizers.SGD(LR), eta=0.0, seed=0)
    sam = SAM(inner, rho=0.1)
    sam.compile(optimizer=optimizer, loss="mse")
    sam.fit(x, y, batch_size=B, epochs=1, verbose=0)
    g = sam_grads(w0, lambda w, b: mse_grads(w, b, x, y), 0.1)
    if wrapper == "clipping":
        norm = np.sqrt(sum(np.sum(gi**2) for gi in g))
        g = [gi * min(1.0, 0.05 / norm) for gi in g]
    for got, p, gi in zip(weights(inner), w0, g):
        np.testing.assert_allclose(got, p - LR * gi, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.clear_session()
    x, y = _batch(2 * B)
    inner = _bn_model()
    sam = SAM(inner, rho=0.1, adaptive=True, eta=0.02, every=3, name="sam")
    _fit(sam, x, y, metrics=["mae"])
    path = str(tmp_path_factory.mktemp("sam") / "sam.keras")
    sam.save(path)
    return sam, x, y, path


def test_keras_round_trip_without_custom_objects(trained):
    sam, x, y, path = trained
    loaded = keras.saving.load_model(path)
    assert type(loaded) is SAM
    assert (loaded.rho, loaded.adaptive, loaded.eta, loaded.every) == (
        0.1,
        True,
        0.02,
        3,
    )
    assert int(to_numpy(loaded.step_counter)) == 2
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), sam.predict(x, verbose=0), rtol=1e-6
    )
    for a, b in zip(
        loaded.optimizer.variables, sam.optimizer.variables, strict=True
    ):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b))
    history = loaded.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert sorted(history.history) == ["loss", "mae"]


def test_evaluate_predict_and_call_run_the_inner_model(trained):
    sam, x, y, _ = trained
    inner = sam.model
    np.testing.assert_allclose(
        sam.evaluate(x, y, verbose=0), inner.evaluate(x, y, verbose=0)
    )
    np.testing.assert_allclose(
        sam.predict(x, verbose=0), inner.predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(sam(x)), to_numpy(inner(x)), rtol=1e-6, atol=1e-7
    )


def test_composes_with_exponential_moving_average():
    from keras_regularize.callbacks.exponential_moving_average import (
        ExponentialMovingAverage,
    )

    x, y = _batch(2 * B)
    inner = linear()
    sam = SAM(inner, rho=0.1)
    ema = ExponentialMovingAverage(decay=0.5, warmup=False, final="raw")
    sam.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    w0 = weights(inner)
    sam.fit(x, y, batch_size=B, epochs=1, shuffle=False, callbacks=[ema])
    _backend.sync_model_state(sam)
    raw = weights(inner)
    # Two steps: average = 0.25 w0 + 0.25 w1 + 0.5 w2 (w2 the raw weights).
    averaged = dict(zip(map(id, sam.weights), ema.averaged_weights()))
    average = [np.array(averaged[id(v)], "float64") for v in inner.weights]
    w1_guess = [
        (a - 0.25 * p - 0.5 * r) / 0.25 for a, p, r in zip(average, w0, raw)
    ]
    g = sam_grads(w0, lambda w, b: mse_grads(w, b, x[:B], y[:B]), 0.1)
    for got, p, gi in zip(w1_guess, w0, g):
        np.testing.assert_allclose(got, p - LR * gi, rtol=1e-4, atol=1e-5)


BAD = [
    ("rho", -0.1),
    ("rho", float("nan")),
    ("rho", float("inf")),
    ("rho", True),
    ("rho", "0.05"),
    ("rho", None),
    ("eta", -1e-3),
    ("eta", float("nan")),
    ("eta", None),
    ("eta", "x"),
    ("every", 0),
    ("every", -2),
    ("every", 2.0),
    ("every", True),
    ("every", None),
    ("adaptive", 1),
    ("adaptive", "yes"),
    ("adaptive", None),
    ("model", None),
    ("model", "model"),
    ("model", keras.layers.Dense),
]


def test_bad_arguments_name_the_argument_and_value():
    # One test for the whole table: each is a constructor call.
    model = linear()
    for name, value in BAD:
        kwargs = {"model": model} if name != "model" else {}
        kwargs[name] = value
        with pytest.raises(ValueError, match=f"`{name}`") as info:
            SAM(**kwargs)
        assert_error_names_value(info.value, name, repr(value))
    sam = SAM(model, rho=0.1)
    sam.rho = 0.3  # a callback's change reaches the variable
    assert float(to_numpy(sam.rho_variable)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="rho=-1"):
        sam.rho = -1
