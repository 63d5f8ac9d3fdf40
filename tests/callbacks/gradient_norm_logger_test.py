"""Tests for keras_regularize.callbacks.GradientNormLogger."""

import keras
import numpy as np
import pytest

from keras_regularize.callbacks import GradientNormLogger
from keras_regularize.optimizers import GradientClipping
from tests import harness
from tests.optimizers import helpers

JIT = harness.jit_modes()


class _BatchNorms(keras.callbacks.Callback):
    """Collects the per-batch `grad_norm` the logger put into `logs`."""

    def __init__(self):
        super().__init__()
        self.norms = []

    def on_train_batch_end(self, batch, logs=None):
        self.norms.append(logs["grad_norm"])


def _fit(optimizer, callbacks, epochs=2, jit=JIT[-1]):
    x, y = helpers.data()
    model = helpers.mlp()
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit)
    history = model.fit(
        x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=callbacks
    )
    return history.history


@pytest.mark.parametrize("jit", JIT)
def test_epoch_logs_are_the_mean_and_max_of_the_step_norms(jit):
    batches = _BatchNorms()
    opt = GradientClipping(keras.optimizers.SGD(0.01), method="none")
    history = _fit(opt, [GradientNormLogger(per_batch=True), batches], jit=jit)
    per_epoch = np.array(batches.norms).reshape(2, 4)  # 16 samples / 4
    assert np.all(per_epoch > 0.0)
    np.testing.assert_allclose(
        history["grad_norm"], per_epoch.mean(axis=1), rtol=1e-5
    )
    np.testing.assert_allclose(
        history["grad_norm_max"], per_epoch.max(axis=1), rtol=1e-6
    )
    assert history["clip_rate"] == [0.0, 0.0]
    # The last batch's norm is what the optimizer holds after fit.
    np.testing.assert_allclose(batches.norms[-1], opt.gradient_norm.numpy())


def test_clip_rate_counts_the_steps_that_clipped():
    tight = GradientClipping(keras.optimizers.SGD(0.01), threshold=1e-4)
    loose = GradientClipping(keras.optimizers.SGD(0.01), threshold=1e4)
    assert _fit(tight, [GradientNormLogger()])["clip_rate"] == [1.0, 1.0]
    assert _fit(loose, [GradientNormLogger()])["clip_rate"] == [0.0, 0.0]


def test_auto_also_logs_its_threshold():
    opt = GradientClipping(keras.optimizers.SGD(0.01), method="auto")
    history = _fit(opt, [GradientNormLogger()], epochs=1)
    assert set(history) == {
        "loss",
        "grad_norm",
        "grad_norm_max",
        "clip_rate",
        "clip_threshold",
    }
    assert history["clip_threshold"][0] <= history["grad_norm_max"][0]


def test_finds_the_clipping_optimizer_inside_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    opt = GradientClipping(keras.optimizers.SGD(0.01), method="none")
    history = _fit(opt, [GradientNormLogger()], epochs=1)
    assert np.isfinite(history["grad_norm"][0])


def test_other_optimizers_get_a_clear_error():
    with pytest.raises(ValueError, match="GradientNormLogger needs the model"):
        _fit(keras.optimizers.SGD(0.01), [GradientNormLogger()], epochs=1)


@pytest.mark.parametrize("value", ["no", "", 1, 0, 1.0, None])
def test_per_batch_takes_bools_only(value):
    with pytest.raises(ValueError, match="argument `per_batch`") as info:
        GradientNormLogger(per_batch=value)
    assert f"per_batch={value!r}" in str(info.value)
    assert GradientNormLogger(per_batch=True).per_batch is True


def test_watching_without_clipping_logs_norms_only():
    # Moved from the docstring example: `method="none"` adds exactly the
    # norm keys and never clips.
    opt = GradientClipping(keras.optimizers.SGD(0.01), method="none")
    history = _fit(opt, [GradientNormLogger()])
    assert set(history) == {"loss", "grad_norm", "grad_norm_max", "clip_rate"}
    assert history["clip_rate"] == [0.0, 0.0]
