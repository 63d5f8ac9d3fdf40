"""Tests for keras_regularize.layers.StochasticResidual."""

import keras
import numpy as np
import pytest

from keras_regularize.layers import StochasticResidual
from tests import harness


def _residual(layer, x):
    return x + harness.to_numpy(layer.block(x))


@pytest.mark.parametrize("mode", ["batch", "subset", "row"])
def test_contract(mode):
    harness.assert_layer_contract(
        StochasticResidual,
        lambda: {"block": keras.layers.Dense(5), "rate": 0.4, "mode": mode},
        (5,),
        inference=_residual,
    )


def test_contract_with_a_nested_model_block():
    def kwargs():
        block = keras.Sequential(
            [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)]
        )
        return {"block": block, "rate": 0.3, "scale_by_keep": False}

    harness.assert_layer_contract(
        StochasticResidual,
        kwargs,
        (3, 4),
        inference=lambda layer, x: x + 0.7 * harness.to_numpy(layer.block(x)),
    )


class Counting(keras.layers.Layer):
    """A block that counts how often its `call` runs (eager only)."""

    calls = 0

    def call(self, inputs):
        Counting.calls += 1
        return inputs * 2.0


def test_batch_mode_skips_or_runs_the_block_for_the_whole_batch():
    rate, calls = 0.9, 300
    Counting.calls = 0
    layer = StochasticResidual(Counting(), rate=rate, seed=5)
    x = np.ones((6, 3), "float32")
    layer(x, training=False)  # builds; one call
    start = Counting.calls
    if harness.BACKEND == "torch":
        outputs = [
            harness.to_numpy(layer(x, training=True)) for _ in range(300)
        ]
    else:
        # One compiled predict of 300 batches instead of 300 eager calls
        # (seconds each under JAX and TensorFlow): the same draws.
        batches = np.tile(x, (calls, 1))
        model = harness.AlwaysTraining(layer)
        predicted = model.predict(batches, batch_size=len(x), verbose=0)
        outputs = np.split(np.asarray(predicted), calls)
    kept = 0
    for y in outputs:
        if np.array_equal(y, x):
            continue
        np.testing.assert_allclose(y, x + 2.0 / (1.0 - rate), rtol=1e-6)
        kept += 1
    assert harness.binomial_ok(kept, calls, 1.0 - rate)
    if harness.BACKEND == "torch":
        # Eager torch runs only the taken branch: the block ran exactly for
        # the kept batches. (JAX and TensorFlow stage both branches of the
        # cond once; the benchmark shows the time saved there.)
        assert Counting.calls - start == kept


def test_batch_mode_updates_block_state_only_when_kept():
    block = keras.Sequential([keras.layers.BatchNormalization(momentum=0.5)])
    layer = StochasticResidual(block, rate=0.5, seed=1)
    x = np.random.default_rng(0).normal(3.0, 1.0, (16, 4)).astype("float32")
    layer(x, training=False)
    mean = block.layers[0].moving_mean
    changed = kept = 0
    for _ in range(40):
        before = harness.to_numpy(mean).copy()
        y = harness.to_numpy(layer(x, training=True))
        moved = not np.array_equal(before, harness.to_numpy(mean))
        is_kept = not np.array_equal(y, x)
        assert moved == is_kept
        kept += is_kept
        changed += moved
    assert 0 < kept < 40 and changed == kept


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_batch_mode_trains_block_state_inside_fit(jit):
    block = keras.Sequential(
        [
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
        ]
    )
    inputs = keras.Input((4,))
    outputs = StochasticResidual(block, rate=0.0, seed=0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(outputs))
    model.compile("sgd", "mse", jit_compile=jit)
    bn = block.layers[1]
    before = harness.to_numpy(bn.moving_mean).copy()
    kernel = harness.to_numpy(block.layers[0].kernel).copy()
    x = np.random.default_rng(0).normal(2.0, 1.0, (32, 4)).astype("float32")
    model.fit(x, np.ones((32, 1), "float32"), batch_size=8, verbose=0)
    assert not np.array_equal(before, harness.to_numpy(bn.moving_mean))
    assert not np.array_equal(kernel, harness.to_numpy(block.layers[0].kernel))


def test_subset_mode_runs_the_block_on_a_fixed_size_subset():
    rate, batch = 0.3, 10
    size = 7  # max(1, floor(10 * 0.7))
    block = keras.layers.Dense(
        3, kernel_initializer="ones", bias_initializer="ones"
    )
    layer = StochasticResidual(block, rate=rate, mode="subset", seed=3)
    x = np.random.default_rng(2).normal(size=(batch, 3)).astype("float32")
    full = x + harness.to_numpy(block(x)) * (batch / size)
    picked = []
    for _ in range(20):
        y = harness.to_numpy(layer(x, training=True))
        same = np.all(y == x, axis=1)
        ran = np.all(np.isclose(y, full, rtol=1e-5, atol=1e-5), axis=1)
        assert np.all(same ^ ran) and ran.sum() == size
        picked.append(ran)
    # The subset changes between steps and covers every sample.
    assert np.all(np.any(picked, axis=0))
    assert len({tuple(p) for p in picked}) > 1


def test_subset_mode_keeps_at_least_one_sample():
    layer = StochasticResidual(keras.layers.Dense(2), rate=0.9, mode="subset")
    x = np.ones((1, 2), "float32")
    y = harness.to_numpy(layer(x, training=True))
    assert not np.array_equal(y, x)


def test_block_with_a_different_output_shape_fails_at_build():
    layer = StochasticResidual(keras.layers.Dense(3), rate=0.1)
    with pytest.raises(
        ValueError,
        match=r"argument `block`.*\(None, 5\) to "
        r"\(None, 3\)",
    ):
        layer.build((None, 5))
    with pytest.raises(ValueError, match="argument `block`"):
        StochasticResidual(keras.layers.Dense(3))(keras.Input((5,)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block": "dense"}, "argument `block`.*Received: block='dense'"),
        ({"rate": 1.0}, "Received: rate=1.0"),
        ({"mode": "row-wise"}, "Received: mode='row-wise'"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs = {"block": keras.layers.Dense(2), **kwargs}
    with pytest.raises(ValueError, match=message):
        StochasticResidual(**kwargs)


@pytest.mark.parametrize("mode", ["batch", "subset"])
def test_keras_run_layer_test_cross_check(mode):
    from keras.src.testing import test_case

    test_case.TestCase().run_layer_test(
        StochasticResidual,
        init_kwargs={
            "block": keras.layers.Dense(4),
            "rate": 0.3,
            "mode": mode,
            "seed": 1,
        },
        input_shape=(2, 4),
        expected_output_shape=(2, 4),
        expected_num_trainable_weights=2,
        # The rate, plus in batch mode the saved host stream of torch's
        # keep/skip decisions.
        expected_num_non_trainable_weights=2 if mode == "batch" else 1,
        expected_num_seed_generators=1,
    )


class _AddsLoss(keras.layers.Layer):
    """A block that doubles its inputs and adds `sum(outputs)` as a loss."""

    def call(self, inputs):
        outputs = inputs * 2.0
        self.add_loss(keras.ops.sum(outputs))
        return outputs


def _lossy_block(kind):
    if kind == "activity":
        return keras.layers.Dense(
            4,
            kernel_initializer="ones",
            activity_regularizer=keras.regularizers.L2(10.0),
        )
    return _AddsLoss()


def _step_losses(kind, rate, jit, steps):
    """Training losses of `head(StochasticResidual(block))` at lr 0."""
    inputs = keras.Input((4,))
    layer = StochasticResidual(_lossy_block(kind), rate=rate, seed=1)
    head = keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)
    model = keras.Model(inputs, head(layer(inputs)))
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit)
    x = np.ones((2, 4), "float32")
    y = np.zeros((2, 1), "float32")
    return [float(model.train_on_batch(x, y)) for _ in range(steps)]


@pytest.mark.parametrize("kind", ["activity", "add_loss"])
@pytest.mark.parametrize("jit", harness.jit_modes())
def test_batch_mode_counts_the_block_losses_exactly_when_it_runs(kind, jit):
    rate = 0.5
    # x = 1 (2 x 4). Kept: out = x + block(x) / keep; dropped: out = x.
    # The head sums the 4 features; mse against 0 is (sum of out)**2.
    if kind == "activity":
        block_out = 4.0  # Dense(ones) of four ones
        # L2(10) of the block's (2, 4) output, divided by the batch size.
        block_loss = 10.0 * (2 * 4 * block_out**2) / 2
    else:
        block_out = 2.0
        block_loss = 2 * 4 * block_out
    kept = (4 * (1.0 + block_out / (1.0 - rate))) ** 2 + block_loss
    dropped = 4.0**2  # and no block loss: the block never ran
    losses = _step_losses(kind, rate, jit, steps=12)
    seen = set()
    for loss in losses:
        if loss == pytest.approx(kept):
            seen.add("kept")
        else:
            assert loss == pytest.approx(dropped), (loss, kept, dropped)
            seen.add("dropped")
    assert seen == {"kept", "dropped"}, losses
    # At rate 0 the block always runs and its loss always counts, as in
    # mode="row" (which runs the block on every sample).
    always = (4 * (1.0 + block_out)) ** 2 + block_loss
    for loss in _step_losses(kind, 0.0, jit, steps=3):
        assert loss == pytest.approx(always)


def test_eager_calls_report_the_block_loss_only_when_kept():
    layer = StochasticResidual(_AddsLoss(), rate=0.5, seed=2)
    x = np.ones((3, 2), "float32")
    outcomes = set()
    for _ in range(16):
        y = harness.to_numpy(layer(x, training=True))
        total = sum(float(harness.to_numpy(v)) for v in layer.losses)
        kept = not np.array_equal(y, x)
        assert total == pytest.approx(12.0 if kept else 0.0)
        outcomes.add(kept)
    assert outcomes == {True, False}


@pytest.mark.parametrize("mode", ["batch", "subset", "row"])
@pytest.mark.parametrize("jit", harness.jit_modes())
def test_empty_batch_gives_an_empty_output(mode, jit):
    layer = StochasticResidual(keras.layers.Dense(3), 0.5, mode=mode, seed=0)
    x = np.zeros((0, 3), "float32")
    for training in (True, False):
        assert harness.to_numpy(layer(x, training=training)).shape == (0, 3)
    model = harness.AlwaysTraining(layer)
    model.compile(jit_compile=jit)
    assert model.predict_on_batch(x).shape == (0, 3)


@pytest.mark.parametrize("mode", ["batch", "subset", "row"])
def test_rate_zero_always_adds_the_whole_block(mode):
    block = keras.layers.Dense(3)
    layer = StochasticResidual(block, rate=0.0, mode=mode, seed=0)
    x = np.random.default_rng(0).normal(size=(7, 3)).astype("float32")
    expected = x + harness.to_numpy(block(x))
    for _ in range(3):
        np.testing.assert_allclose(
            harness.to_numpy(layer(x, training=True)), expected, atol=1e-6
        )


@pytest.mark.parametrize("mode", ["batch", "subset", "row"])
def test_integer_inputs_are_refused_naming_the_layer_and_dtype(mode):
    layer = StochasticResidual(keras.layers.Dense(3), 0.5, mode=mode)
    message = "`StochasticResidual`.*floating-point.*dtype=int32"
    for training in (True, False):
        with pytest.raises(ValueError, match=message):
            layer(np.ones((2, 3), "int32"), training=training)
    with pytest.raises(ValueError, match=message):
        StochasticResidual(keras.layers.Dense(3))(
            keras.Input((3,), dtype="int32")
        )


@pytest.mark.parametrize("value", ["no", 1, None])
def test_scale_by_keep_takes_bools_only(value):
    with pytest.raises(
        ValueError,
        match=f"argument `scale_by_keep`.*Received: scale_by_keep={value!r}",
    ):
        StochasticResidual(keras.layers.Dense(2), scale_by_keep=value)


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), True, "0.1", None]
)
def test_non_finite_or_non_numeric_rates_are_refused(value):
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        StochasticResidual(keras.layers.Dense(2), rate=value)
    layer = StochasticResidual(keras.layers.Dense(2), rate=0.2)
    with pytest.raises(ValueError, match="argument `rate`.*Received: rate="):
        layer.rate = value
    assert layer.rate == 0.2


@pytest.mark.parametrize("jit", harness.jit_modes())
def test_subset_mode_trains_through_an_odd_last_batch(jit):
    # Batches of 5, 5 and 3 rows: TensorFlow retraces the step with a
    # dynamic batch size, which takes the subset size from the tensor.
    block = keras.layers.Dense(3)
    inputs = keras.Input((3,))
    layer = StochasticResidual(block, rate=0.5, mode="subset", seed=0)
    model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))
    model.compile("sgd", "mse", jit_compile=jit)
    kernel = harness.to_numpy(block.kernel).copy()
    x = np.random.default_rng(0).normal(size=(13, 3)).astype("float32")
    history = model.fit(
        x, np.ones((13, 1), "float32"), batch_size=5, epochs=2, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(kernel, harness.to_numpy(block.kernel))


torch_only = pytest.mark.skipif(
    harness.BACKEND != "torch", reason="torch draws batch decisions on host"
)


def _decisions(layer, calls):
    x = np.ones((2, 4), "float32")
    return [
        bool(harness.to_numpy(layer(x, training=True))[0, 0] > 1.5)
        for _ in range(calls)
    ]


@torch_only
def test_torch_host_stream_is_reproducible_and_survives_save_load(tmp_path):
    # The same seed gives the same decisions; a saved layer continues its
    # stream after loading, where the original would have continued.
    def build():
        block = keras.layers.Dense(4, kernel_initializer="ones")
        inputs = keras.Input((4,))
        layer = StochasticResidual(block, rate=0.5, seed=3)
        return keras.Model(inputs, layer(inputs)), layer

    model, layer = build()
    _, twin = build()
    first = _decisions(layer, 12)
    assert first == _decisions(twin, 12)
    assert 0 < sum(first) < 12
    path = str(tmp_path / "residual.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = [
        lay for lay in loaded.layers if isinstance(lay, StochasticResidual)
    ][0]
    assert _decisions(restored, 12) == _decisions(layer, 12)


def test_batch_mode_loads_files_saved_without_the_host_stream():
    # Files written before the host stream existed hold the rate only.
    layer = StochasticResidual(keras.layers.Dense(4), rate=0.5, seed=3)
    layer.build((None, 4))
    layer.load_own_variables({"0": np.array(0.25, "float32")})
    assert float(harness.to_numpy(layer.rate_variable)) == 0.25


@torch_only
def test_torch_training_step_reads_no_device_value():
    # A 12-block StochasticResidual model, two `fit` steps profiled from
    # `on_train_batch_begin` to `on_train_batch_end` (the train step only,
    # none of Keras's logging). Reads are attributed to the Python frames
    # above them: none comes from this package. (Keras's torch SGD reads
    # its 0-d learning rate in `_foreach_add_`, outside our code.)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    reads = ("aten::item", "aten::_local_scalar_dense")

    def count(prof, frame):
        found = 0
        for event in prof.events():
            if event.name not in reads:
                continue
            parent = event.cpu_parent
            while parent is not None and frame not in parent.name:
                parent = parent.cpu_parent
            found += parent is not None
        return found

    def profiled():
        return profile(activities=[ProfilerActivity.CPU], with_stack=True)

    class StepProfiler(keras.callbacks.Callback):
        counts = []

        def on_train_batch_begin(self, batch, logs=None):
            self.prof = profiled()
            self.prof.__enter__()

        def on_train_batch_end(self, batch, logs=None):
            self.prof.__exit__(None, None, None)
            self.counts.append(count(self.prof, "keras_regularize"))

    inputs = keras.Input((8,))
    h = inputs
    for i in range(12):
        h = StochasticResidual(
            keras.layers.Dense(8, activation="tanh"), rate=0.5, seed=i
        )(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((16, 8), "float32"), np.ones((16, 1), "float32")
    model.fit(
        x, y, batch_size=8, epochs=1, verbose=0, callbacks=[StepProfiler()]
    )
    assert StepProfiler.counts == [0, 0]
    # The attribution does see a read made from a given file.
    with profiled() as prof:
        bool(keras.ops.sum(keras.ops.ones((2,))) > 0)
    assert count(prof, "stochastic_residual_test.py") >= 1
