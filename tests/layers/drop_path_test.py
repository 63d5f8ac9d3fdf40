"""Tests for keras_regularize.layers.drop_path: DropPath, drop_path_rates."""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_regularize.layers import DropPath
from keras_regularize.layers import drop_path_rates
from tests import harness


@pytest.mark.parametrize("shape", [(6,), (5, 3), (4, 4, 3)])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_contract(shape, mode):
    harness.assert_layer_contract(DropPath, {"rate": 0.4, "mode": mode}, shape)


def test_row_mode_drops_whole_samples_at_rate():
    rate, n = 0.25, 4000
    x = np.ones((n, 5, 3), "float32")
    y = harness.to_numpy(DropPath(rate, seed=1)(x, training=True))
    per_sample = y.reshape(n, -1)
    dropped = np.all(per_sample == 0.0, axis=1)
    kept = np.all(per_sample == np.float32(1.0 / (1.0 - rate)), axis=1)
    assert np.all(dropped | kept), "a sample was partly dropped"
    assert harness.binomial_ok(dropped.sum(), n, rate)
    # Inverted scaling keeps the mean: E[y] = 1.
    sd = np.sqrt(rate / (1 - rate) / n)
    assert abs(per_sample[:, 0].mean() - 1.0) < 4 * sd


def test_batch_mode_keeps_or_drops_the_whole_batch():
    layer = DropPath(0.5, mode="batch", seed=3)
    x = np.ones((8, 4), "float32")
    dropped = 0
    calls = 400
    for _ in range(calls):
        y = harness.to_numpy(layer(x, training=True))
        assert np.all(y == 0.0) or np.all(y == 2.0)
        dropped += int(np.all(y == 0.0))
    assert harness.binomial_ok(dropped, calls, 0.5)


def test_without_scaling_kept_samples_are_unchanged():
    x = np.random.default_rng(0).normal(size=(256, 3)).astype("float32")
    y = harness.to_numpy(
        DropPath(0.5, scale_by_keep=False, seed=0)(x, training=True)
    )
    for row_x, row_y in zip(x, y):
        assert np.all(row_y == 0.0) or np.array_equal(row_x, row_y)


def test_gradients_reach_only_kept_samples():
    rate = 0.5
    layer = DropPath(rate, seed=4)
    x = np.random.default_rng(1).normal(size=(512, 6)).astype("float32")
    grad = harness.gradient(lambda t: layer(t, training=True), x)
    zero = np.all(grad == 0.0, axis=1)
    scaled = np.allclose(grad, 1.0 / (1.0 - rate), rtol=0, atol=1e-6)
    per_row_scaled = np.all(np.isclose(grad, 2.0, atol=1e-6), axis=1)
    assert not scaled and np.all(zero | per_row_scaled)
    assert harness.binomial_ok(zero.sum(), 512, rate)


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_rate_changed_by_a_callback_applies_inside_compiled_steps(jit):
    layer = DropPath(0.0, mode="batch", seed=0)
    inputs = keras.Input((4,))
    head = keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)
    model = keras.Model(inputs, head(layer(inputs)))
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit)
    x = np.ones((64, 4), "float32")
    y = np.zeros((64, 1), "float32")

    class Ramp(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            layer.rate = [0.0, 0.99][epoch]

    losses = model.fit(
        x, y, batch_size=64, epochs=2, verbose=0, callbacks=[Ramp()]
    ).history["loss"]
    assert losses[0] == pytest.approx(16.0)  # sum of four ones, squared
    # At rate 0.99 the single-batch mask is almost surely 0 (loss 0) and
    # otherwise 100x larger; either way not the rate-0 loss.
    assert losses[1] != pytest.approx(16.0)
    assert layer.rate == 0.99
    assert float(harness.to_numpy(layer.rate_variable)) == pytest.approx(0.99)


def test_identity_at_inference_and_masks_pass_through():
    layer = DropPath(0.5)
    assert layer.supports_masking
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(harness.to_numpy(layer(x)), x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate": 1.0}, "argument `rate`.*Received: rate=1.0"),
        ({"rate": -0.1}, "argument `rate`.*Received: rate=-0.1"),
        ({"rate": "0.1"}, "argument `rate`.*Received: rate='0.1'"),
        ({"mode": "col"}, "argument `mode`.*Received: mode='col'"),
        ({"seed": -1}, "argument `seed`.*Received: seed=-1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropPath(**kwargs)


def test_bad_rate_assignment_keeps_the_old_rate():
    layer = DropPath(0.2)
    with pytest.raises(ValueError, match="Received: rate=1.5"):
        layer.rate = 1.5
    assert layer.rate == 0.2


def test_rank_one_input_is_rejected():
    with pytest.raises(ValueError, match=r"rank >= 2.*Received: shape"):
        DropPath(0.1)(np.ones((4,), "float32"))


def test_keras_run_layer_test_cross_check():
    from keras.src.testing import test_case

    test_case.TestCase().run_layer_test(
        DropPath,
        init_kwargs={"rate": 0.3, "seed": 1},
        input_shape=(2, 3, 4),
        expected_output_shape=(2, 3, 4),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
        expected_num_seed_generators=1,
        supports_masking=True,
    )


@pytest.mark.parametrize("value", ["no", "", 1, 0, None, 0.5])
def test_scale_by_keep_takes_bools_only(value):
    with pytest.raises(
        ValueError,
        match=f"argument `scale_by_keep`.*Received: scale_by_keep={value!r}",
    ):
        DropPath(0.5, scale_by_keep=value)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool"])
def test_integer_inputs_are_refused_naming_the_layer_and_dtype(dtype):
    # JAX without x64 holds int64 data as int32.
    shown = "int(32|64)" if dtype == "int64" else dtype
    message = f"`DropPath`.*floating-point.*dtype={shown}"
    x = np.ones((4, 3), dtype)
    for training in (True, False):
        with pytest.raises(ValueError, match=message):
            DropPath(0.5)(x, training=training)
    # A symbolic input fails when the model is built, not at the first step.
    with pytest.raises(ValueError, match=message):
        DropPath(0.5)(keras.Input((3,), dtype=dtype))


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("jit", harness.jit_modes())
def test_empty_batch_gives_an_empty_output(mode, jit):
    layer = DropPath(0.5, mode=mode, seed=0)
    x = np.zeros((0, 3, 2), "float32")
    assert harness.to_numpy(layer(x, training=True)).shape == (0, 3, 2)
    model = harness.AlwaysTraining(layer)
    model.compile(jit_compile=jit)
    assert model.predict_on_batch(x).shape == (0, 3, 2)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_rate_zero_is_exactly_the_identity_in_training(mode, scale_by_keep):
    x = np.random.default_rng(0).normal(size=(9, 5)).astype("float32")
    layer = DropPath(0.0, mode=mode, scale_by_keep=scale_by_keep, seed=0)
    for _ in range(3):
        np.testing.assert_array_equal(
            harness.to_numpy(layer(x, training=True)), x
        )


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), True, "0.1", None]
)
def test_non_finite_or_non_numeric_rates_are_refused(value):
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        DropPath(value)
    layer = DropPath(0.2)
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        layer.rate = value
    assert layer.rate == 0.2
    assert float(harness.to_numpy(layer.rate_variable)) == pytest.approx(0.2)


@settings(max_examples=12, deadline=None)
@given(
    rate=st.one_of(st.just(0.0), st.floats(0.01, 0.95)),
    batch=st.integers(1, 400),
    features=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    scale_by_keep=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kept_fraction_is_binomial_and_kept_samples_are_scaled_exactly(
    rate, batch, features, scale_by_keep, seed
):
    shape = (batch, *features)
    x = np.random.default_rng(seed).uniform(0.5, 2.0, shape).astype("float32")
    layer = DropPath(rate, scale_by_keep=scale_by_keep, seed=seed)
    y = harness.to_numpy(layer(x, training=True)).reshape(batch, -1)
    x = x.reshape(batch, -1)
    dropped = np.all(y == 0.0, axis=1)
    # Inputs are non-zero, so a kept sample has no zero entry.
    assert np.all(dropped | np.all(y != 0.0, axis=1)), "a partial drop"
    assert harness.binomial_ok(dropped.sum(), batch, rate, sigmas=5.0)
    # The layer's float32 arithmetic: keep = 1 - rate, scale = 1 / keep.
    keep = np.float32(1.0) - np.float32(rate)
    scale = np.float32(1.0) / keep if scale_by_keep else np.float32(1.0)
    np.testing.assert_array_equal(y[~dropped], x[~dropped] * scale)


# drop_path_rates: the linear-decay schedule.


def test_linear_from_zero_to_max():
    rates = drop_path_rates(12, 0.5)
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == 0.5
    np.testing.assert_allclose(np.diff(rates), 0.5 / 11)


def test_stages_split_one_schedule():
    staged = drop_path_rates(12, 0.3, stages=[2, 2, 6, 2])
    assert [len(s) for s in staged] == [2, 2, 6, 2]
    assert sum(staged, []) == drop_path_rates(12, 0.3)


def test_edge_counts():
    assert drop_path_rates(0, 0.2) == []
    assert drop_path_rates(1, 0.2) == [0.0]
    assert drop_path_rates(3, 0.2, stages=[0, 3]) == [[], [0.0, 0.1, 0.2]]


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((-1, 0.1), {}, "argument `num_blocks`.*Received: num_blocks=-1"),
        ((4, 1.0), {}, "argument `max_rate`.*Received: max_rate=1.0"),
        ((4, -0.2), {}, "argument `max_rate`.*Received: max_rate=-0.2"),
        ((4, 0.1), {"stages": [2, 3]}, r"summing to num_blocks=4"),
        ((4, 0.1), {"stages": [5, -1]}, r"Received: stages=\[5, -1\]"),
        ((4, 0.1), {"stages": 4}, r"Received: stages=4"),
    ],
)
def test_drop_path_rates_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        drop_path_rates(*args, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((4, float("inf")), {}, "max_rate"),
        ((4, float("nan")), {}, "max_rate"),
        ((4, True), {}, "max_rate"),
        ((4, "0.1"), {}, "max_rate"),
        ((4, None), {}, "max_rate"),
        ((True, 0.1), {}, "num_blocks"),
        ((float("inf"), 0.1), {}, "num_blocks"),
        ((4.0, 0.1), {}, "num_blocks"),
        ((2, 0.1), {"stages": [True, 1]}, "stages"),
    ],
)
def test_drop_path_rates_refuse_non_finite_or_mistyped(args, kwargs, name):
    with pytest.raises(ValueError, match=f"argument `{name}`.*Received"):
        drop_path_rates(*args, **kwargs)
