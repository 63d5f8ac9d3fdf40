"""Tests for keras_regularize.layers.StochasticDepth."""

import keras
import numpy as np
import pytest

from keras_regularize.layers import StochasticDepth
from tests import harness


def _sum(layer, x):
    return x[0] + x[1]


def _paper_inference(layer, x):
    return x[0] + (1.0 - layer.rate) * x[1]


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_contract(mode):
    harness.assert_layer_contract(
        StochasticDepth,
        {"rate": 0.4, "mode": mode},
        [(5,), (5,)],
        inference=_sum,
    )


def test_contract_paper_form():
    harness.assert_layer_contract(
        StochasticDepth,
        {"rate": 0.4, "scale_by_keep": False},
        [(3, 2), (3, 2)],
        inference=_paper_inference,
    )


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_training_adds_a_dropped_or_kept_residual(scale_by_keep):
    rate, n = 0.3, 2000
    rng = np.random.default_rng(0)
    shortcut = rng.normal(size=(n, 4)).astype("float32")
    residual = rng.normal(size=(n, 4)).astype("float32")
    layer = StochasticDepth(rate, scale_by_keep=scale_by_keep, seed=2)
    branch = harness.to_numpy(layer([shortcut, residual], training=True))
    branch = branch - shortcut
    scale = 1.0 / (1.0 - rate) if scale_by_keep else 1.0
    dropped = np.all(np.abs(branch) < 1e-6, axis=1)
    kept = np.all(np.isclose(branch, residual * scale, atol=1e-5), axis=1)
    assert np.all(dropped | kept)
    assert harness.binomial_ok(dropped.sum(), n, rate)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (np.ones((2, 3), "float32"), "a list of two tensors"),
        ([np.ones((2, 3), "float32")], "a list of two tensors"),
        ([np.ones((2, 3), "float32")] * 3, "a list of two tensors"),
        (
            [np.ones((2, 3), "float32"), np.ones((2, 4), "float32")],
            r"same shape.*\(2, 3\) and \(2, 4\)",
        ),
    ],
)
def test_bad_inputs(inputs, message):
    with pytest.raises(ValueError, match=message):
        StochasticDepth(0.1)(inputs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: rate=1"):
        StochasticDepth(1)
    with pytest.raises(ValueError, match="Received: mode='rows'"):
        StochasticDepth(0.1, mode="rows")


def test_keras_run_layer_test_cross_check():
    from keras.src.testing import test_case

    test_case.TestCase().run_layer_test(
        StochasticDepth,
        init_kwargs={"rate": 0.3, "seed": 1},
        input_shape=[(2, 3, 4), (2, 3, 4)],
        expected_output_shape=(2, 3, 4),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=1,
        expected_num_seed_generators=1,
        # Keras's own training check cannot build its tf.data pipeline for
        # list inputs on TensorFlow; our contract trains this layer there.
        run_training_check=harness.BACKEND != "tensorflow",
    )


@pytest.mark.parametrize("value", ["no", 1, None])
def test_scale_by_keep_takes_bools_only(value):
    with pytest.raises(
        ValueError,
        match=f"argument `scale_by_keep`.*Received: scale_by_keep={value!r}",
    ):
        StochasticDepth(0.5, scale_by_keep=value)


@pytest.mark.parametrize("which", ["shortcut", "residual"])
def test_integer_inputs_are_refused_naming_the_layer_and_dtype(which):
    good = np.ones((4, 3), "float32")
    bad = np.ones((4, 3), "int32")
    pair = [bad, good] if which == "shortcut" else [good, bad]
    message = f"`StochasticDepth`.*`{which}`.*dtype=int32"
    for training in (True, False):
        with pytest.raises(ValueError, match=message):
            StochasticDepth(0.5)(pair, training=training)
    symbolic = [keras.Input((3,), dtype=str(p.dtype)) for p in pair]
    with pytest.raises(ValueError, match=message):
        StochasticDepth(0.5)(symbolic)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("jit", harness.jit_modes())
def test_empty_batch_gives_an_empty_output(mode, jit):
    layer = StochasticDepth(0.5, mode=mode, seed=0)
    x = np.zeros((0, 4), "float32")
    assert harness.to_numpy(layer([x, x], training=True)).shape == (0, 4)
    model = harness.AlwaysTraining(layer)
    model.compile(jit_compile=jit)
    assert model.predict_on_batch([x, x]).shape == (0, 4)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_rate_zero_adds_the_whole_residual_in_training(mode):
    rng = np.random.default_rng(0)
    shortcut, residual = rng.normal(size=(2, 7, 3)).astype("float32")
    for scale_by_keep in (True, False):
        layer = StochasticDepth(0.0, mode=mode, scale_by_keep=scale_by_keep)
        np.testing.assert_array_equal(
            harness.to_numpy(layer([shortcut, residual], training=True)),
            shortcut + residual,
        )


def test_batch_of_one_keeps_or_drops_the_residual_whole():
    # keras-cv's training check: the output sums to the shortcut's sum or
    # to that plus the (scaled) residual's.
    x = np.random.default_rng(1).uniform(size=(1, 6, 6, 8)).astype("float32")
    layer = StochasticDepth(0.5, scale_by_keep=False, seed=3)
    totals = {
        round(float(harness.to_numpy(layer([x, x], training=True)).sum()), 2)
        for _ in range(20)
    }
    assert totals == {round(float(x.sum()), 2), round(float(2 * x.sum()), 2)}


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), True, "0.1", None]
)
def test_non_finite_or_non_numeric_rates_are_refused(value):
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        StochasticDepth(value)
    layer = StochasticDepth(0.2)
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        layer.rate = value
    assert layer.rate == 0.2
