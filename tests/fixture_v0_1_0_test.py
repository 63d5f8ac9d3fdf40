"""Files saved by keras_regularize 0.1.0 load with the current code.

The fixtures in `tests/fixtures/` were written by
`tests/fixtures/make_v0_1_0_fixture.py` running against commit 0041eb2 (the
0.1.0 release) under JAX. Each test loads them on the current backend with no
`custom_objects`, checks classes, configs and the values of the variables a
config does not hold, and compares inference predictions with the ones 0.1.0
computed. A failure here means a class name, registered name, config key or
variable creation order changed in a way that breaks users' saved models.
"""

import json
import pathlib

import keras
import numpy as np
import pytest

import keras_regularize as kr
from tests.harness import to_numpy

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
RECORD = json.loads((FIXTURES / "v0_1_0.json").read_text())


def value(variable):
    return np.asarray(to_numpy(variable)).item()


@pytest.fixture(scope="module")
def model():
    return keras.saving.load_model(FIXTURES / "v0_1_0_model.keras")


@pytest.fixture(scope="module")
def distiller():
    return keras.saving.load_model(FIXTURES / "v0_1_0_distiller.keras")


def _assert_predicts_as_recorded(model, key):
    """Inference outputs on the recorded input equal 0.1.0's outputs."""
    x = np.asarray(RECORD[key]["input"], "float32")
    np.testing.assert_allclose(
        to_numpy(model(x, training=False)),
        RECORD[key]["predictions"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_predictions_match_the_release(model):
    _assert_predicts_as_recorded(model, "model")


def test_mixing_models_and_mixers(model):
    assert isinstance(model, kr.models.MixingModel)
    inner = model.model
    assert isinstance(inner, kr.models.MixingModel)
    assert isinstance(inner.model, kr.models.MixingModel)
    mixers = {
        "random": (model.mixer, kr.layers.RandomMix),
        "cutmix": (inner.mixer, kr.layers.CutMixLayer),
        "mixup": (inner.model.mixer, kr.layers.MixupLayer),
    }
    for key, (mixer, cls) in mixers.items():
        assert isinstance(mixer, cls), key
    expected = {
        "random": {"mixup_alpha": 0.6, "cutmix_alpha": 0.9, "seed": 9},
        "cutmix": {"alpha": 0.7, "probability": 0.5, "seed": 8},
        "mixup": {"alpha": 0.3, "mode": "elem", "seed": 7},
    }
    for key, config in expected.items():
        mixer = mixers[key][0]
        got = mixer.get_config()
        for name, want in config.items():
            assert got[name] == pytest.approx(want), (key, name)
    assert mixers["random"][0].switch_prob == pytest.approx(0.4)
    assert mixers["cutmix"][0].data_format == "channels_last"
    # The run-time hyperparameters come back in their variables too.
    assert value(mixers["cutmix"][0].probability_variable) == pytest.approx(0.5)
    assert value(mixers["mixup"][0].alpha_variable) == pytest.approx(0.3)


def network(model):
    return model.model.model.model


def test_layers_of_the_network(model):
    net = network(model)
    expected = {
        "drop_block2d": (kr.layers.DropBlock2D, {"rate": 0.15}),
        "drop_path": (kr.layers.DropPath, {"rate": 0.2, "seed": 2}),
        "stochastic_depth": (
            kr.layers.StochasticDepth,
            {"rate": 0.25, "mode": "row", "seed": 3},
        ),
        "stochastic_residual": (
            kr.layers.StochasticResidual,
            {"rate": 0.3, "mode": "batch", "seed": 4},
        ),
        "mc_dropout": (kr.layers.MCDropout, {"rate": 0.25, "seed": 5}),
        "weight_noise": (kr.layers.WeightNoise, {"stddev": 0.05, "seed": 6}),
    }
    for name, (cls, config) in expected.items():
        layer = net.get_layer(name)
        assert isinstance(layer, cls), name
        got = layer.get_config()
        for key, want in config.items():
            assert got[key] == pytest.approx(want), (name, key)
    drop_block = net.get_layer("drop_block2d")
    assert drop_block.block_size == 3
    residual = net.get_layer("stochastic_residual")
    assert isinstance(residual.block, keras.layers.Conv2D)
    assert residual.block.name == "block"
    noise = net.get_layer("weight_noise")
    assert isinstance(noise.layer, keras.layers.Dense)
    for name in ("drop_path", "stochastic_depth", "stochastic_residual"):
        rate = expected[name][1]["rate"]
        assert value(net.get_layer(name).rate_variable) == pytest.approx(rate)
    assert value(noise.stddev_variable) == pytest.approx(0.05)


def test_weight_constraint_and_regularizer(model):
    stem = network(model).get_layer("stem")
    assert isinstance(stem.kernel_constraint, kr.constraints.MaxNorm)
    assert stem.kernel_constraint.max_value == 2.0
    assert tuple(stem.kernel_constraint.axis) == (0, 1, 2)
    assert isinstance(stem.kernel_regularizer, kr.regularizers.ElasticNet)
    assert stem.kernel_regularizer.strength == pytest.approx(1e-3)
    assert stem.kernel_regularizer.l1_ratio == pytest.approx(0.3)


def test_compiled_loss_and_optimizer(model):
    assert isinstance(model.loss, kr.losses.SparseCategoricalCrossentropy)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    assert model.loss.from_logits is True
    clip = model.optimizer
    assert isinstance(clip, kr.optimizers.GradientClipping)
    assert clip.method == "global_norm"
    assert clip.threshold == pytest.approx(1.5)
    noise = clip.optimizer
    assert isinstance(noise, kr.optimizers.GradientNoise)
    assert noise.eta == pytest.approx(0.01) and noise.seed == 10
    assert isinstance(noise.optimizer, keras.optimizers.SGD)
    assert float(noise.learning_rate) == pytest.approx(0.05)


def test_optimizer_state_is_restored(model):
    clip = model.optimizer
    saved = RECORD["model"]["optimizer"]
    assert int(to_numpy(clip.iterations)) == saved["iterations"]
    assert int(to_numpy(clip.step_count)) == saved["step_count"]
    assert value(clip.gradient_norm) == pytest.approx(saved["gradient_norm"])
    assert value(clip.norm_sum) == pytest.approx(saved["norm_sum"])
    assert value(clip.threshold_variable) == pytest.approx(1.5)
    assert value(clip.optimizer.eta_variable) == pytest.approx(0.01)


def test_distiller(distiller):
    assert isinstance(distiller, kr.models.Distiller)
    assert distiller.temperature == pytest.approx(3.0)
    assert distiller.alpha == pytest.approx(0.4)
    assert value(distiller.temperature_variable) == pytest.approx(3.0)
    assert value(distiller.alpha_variable) == pytest.approx(0.4)
    assert distiller.from_logits is True
    assert distiller.student.name == "student"
    assert distiller.teacher.name == "teacher"
    assert distiller.teacher.trainable is False
    assert isinstance(distiller.loss, kr.losses.SparseCategoricalCrossentropy)
    _assert_predicts_as_recorded(distiller, "distiller")
    x = np.asarray(RECORD["distiller"]["input"], "float32")
    np.testing.assert_allclose(
        to_numpy(distiller.teacher(x, training=False)),
        RECORD["distiller"]["teacher_predictions"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_distillation_loss_config():
    loss = keras.saving.deserialize_keras_object(
        RECORD["serialized"]["DistillationLoss"]
    )
    assert isinstance(loss, kr.losses.DistillationLoss)
    assert loss.temperature == pytest.approx(2.5)
    assert loss.alpha == pytest.approx(0.35)
    assert loss.from_logits is False


def test_loaded_model_trains_and_saves_again(tmp_path):
    model = keras.saving.load_model(FIXTURES / "v0_1_0_model.keras")
    x = np.asarray(RECORD["model"]["input"], "float32")
    # The file was compiled with `jit_compile=True` (JAX's "auto"): under
    # torch that is a minute of `torch.compile` for one step. JAX keeps it:
    # without jit its step runs op by op, several times slower.
    if keras.backend.backend() == "torch":
        model.jit_compile = False
    model.fit(x, np.arange(len(x)) % 3, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    np.testing.assert_allclose(
        to_numpy(again(x, training=False)),
        to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
