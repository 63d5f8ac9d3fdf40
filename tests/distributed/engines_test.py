"""Stochastic depth and EarlyStoppingRestore under Keras's distribution engines.

Each engine needs its device count fixed before the framework starts, so the
training runs in `_engines_worker.py` subprocesses (one per backend,
module-scoped). The worker reports losses, weight differences and decisions;
the assertions are made here.
"""

import os

import keras
import numpy as np
import pytest

from tests.distributed._engines_worker import CASES
from tests.distributed._engines_worker import ReplicaDraws
from tests.distributed._launch import run_worker
from tests.harness import binomial_ok

BACKEND = keras.backend.backend()
TOL = 1e-5
WORKER = os.path.join(os.path.dirname(__file__), "_engines_worker.py")


@pytest.fixture(scope="module")
def jax_result():
    return run_worker(
        WORKER,
        "jax_data_parallel",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )


@pytest.fixture(scope="module")
def tf_result():
    return run_worker(WORKER, "tf_mirrored")


@pytest.fixture(scope="module")
def torch_result(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp")
    return run_worker(WORKER, "torch_ddp", {"directory": str(directory)})


def _result(request):
    if BACKEND == "jax":
        return request.getfixturevalue("jax_result")
    if BACKEND == "tensorflow":
        return request.getfixturevalue("tf_result")
    pytest.skip("keras.distribution/tf.distribute: jax and tensorflow only")


engines = pytest.mark.skipif(
    BACKEND not in ("jax", "tensorflow"),
    reason="DataParallel runs on jax, MirroredStrategy on tensorflow; "
    "torch uses DDP (the test_torch_ddp_ tests)",
)


REPLICAS = {"jax": 8, "tensorflow": 2}.get(BACKEND)
KEYS = sorted(f"{case}/{rate}" for case in CASES for rate in ("0.0", "0.5"))


@engines
def test_engine_uses_several_devices(request):
    result = _result(request)
    assert result.get("devices", result.get("replicas")) == REPLICAS
    for run in result["cases"].values():
        # Every distributed model's weights live on every device.
        assert run["single_replicas"] == 1
        assert run["multi_replicas"] == REPLICAS


@engines
@pytest.mark.parametrize("case", sorted(CASES))
def test_rate_zero_equals_single_device(request, case):
    run = _result(request)["cases"][f"{case}/0.0"]
    np.testing.assert_allclose(run["multi_loss"], run["single_loss"], rtol=TOL)
    assert run["weight_diff"] < TOL


@engines
def test_batch_mode_with_same_seeds_equals_single_device(request):
    # One draw per step, replicated: every replica takes the single-device
    # decision, and the seed state advances once per step as on one device.
    run = _result(request)["cases"]["stochastic_depth/0.5"]
    np.testing.assert_allclose(run["multi_loss"], run["single_loss"], rtol=TOL)
    assert run["weight_diff"] < TOL


@pytest.mark.skipif(BACKEND != "jax", reason="jax DataParallel only")
@pytest.mark.parametrize("case", sorted(CASES))
def test_jax_random_cases_equal_single_device(jax_result, case):
    # DataParallel compiles one program over the global batch, so every
    # random draw (row masks, Mixup's lambda and partners) is the
    # single-device draw: the draws are global over the sharded batch (and
    # differ between shards: test_per_sample_draws_differ_across_replicas).
    run = jax_result["cases"][f"{case}/0.5"]
    np.testing.assert_allclose(run["multi_loss"], run["single_loss"], rtol=TOL)
    assert run["weight_diff"] < TOL


@engines
@pytest.mark.parametrize("case", sorted(CASES))
def test_random_cases_loss_falls(request, case):
    run = _result(request)["cases"][f"{case}/0.5"]
    assert run["multi_loss"][-1] < 0.8 * run["multi_loss"][0], run


@engines
@pytest.mark.parametrize("key", KEYS)
def test_early_stopping_restores_best_epoch(request, key):
    run = _result(request)["cases"][key]
    assert run["best_epoch"] == 1 and run["restored"]
    assert run["restore_error"] == 0.0
    assert run["last_vs_best"] > 1e-3  # the restore is visible


@engines
def test_batch_mode_decision_is_the_same_on_every_replica(request):
    decisions = _result(request)["decisions"]
    # Every sample of every shard saw the same keep/drop decision...
    assert decisions["distinct_rows"] == [1] * 24
    # ...and the decision changes from step to step (the state advances).
    for key in ("residual_kept", "drop_path_kept"):
        kept = decisions[key]
        assert 4 <= sum(kept) <= 20, kept


STEPS = 24
# Keep/drop flags of a few samples may coincide across replicas by chance
# in some steps (1 in 256 for 8 samples at keep 0.5; 1 in 70 for an
# 8-choose-4 subset); a repeated draw coincides in every step. Lambdas,
# partners and noise coincide by chance practically never.
CHANCE_LIMIT = {name: 0 for name in ReplicaDraws.COLUMNS}
CHANCE_LIMIT.update({name: STEPS // 4 for name in ReplicaDraws.KEPT})


def _assert_kept_binomial(name, kept, draws):
    for count in kept:
        if name == "subset":
            # A fixed-size subset: exactly floor(B / 2) samples per step.
            assert count == draws // 2, (name, kept, draws)
        else:
            assert binomial_ok(count, draws, 0.5), (name, kept, draws)


@engines
@pytest.mark.parametrize("name", sorted(ReplicaDraws.COLUMNS))
def test_per_sample_draws_differ_across_replicas_in_each_step(request, name):
    # Every replica's draws within one step, gathered: no replica repeats
    # another's (TensorFlow folds the replica id into the seed; JAX draws
    # once over the global batch).
    if BACKEND == "jax" and name in ReplicaDraws.MIXING:
        pytest.skip(
            "global under DataParallel: test_jax_random_cases_equal_single_"
            "device[mixing] shows Mixup's partners and lambdas are the "
            "single-device ones"
        )
    fact = _result(request)["decisions"]["draws"][name]
    if BACKEND == "jax" and name == "weight_noise":
        # One program over the global batch: one noised kernel per step,
        # shared by every shard, as on a single device.
        assert fact["identical_steps"] == STEPS, fact
        return
    assert fact["identical_steps"] <= CHANCE_LIMIT[name], fact
    if name not in ReplicaDraws.KEPT:
        return
    assert len(fact["kept"]) == REPLICAS
    if BACKEND == "jax" and name == "subset":
        # One subset of half the global batch, spread over the shards.
        assert sum(fact["kept"]) == REPLICAS * fact["draws"] // 2, fact
        return
    _assert_kept_binomial(name, fact["kept"], fact["draws"])


@pytest.mark.skipif(BACKEND != "jax", reason="jax DataParallel only")
def test_jax_batch_not_divisible_by_devices_raises(jax_result):
    error = jax_result["indivisible_error"]
    assert error is not None
    assert error.startswith("IndivisibleError")
    assert "partitioned 8 times, but the dimension size is 12" in error
    assert "should evenly divide the shape" in error


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf MirroredStrategy only")
@pytest.mark.parametrize("model", ["stochastic_depth", "dense"])
def test_tf_batch_not_divisible_by_replicas_raises(tf_result, model):
    # Same error for a plain Dense model: this is Keras's TensorFlow trainer,
    # not our layers.
    error = tf_result[f"odd_batch_error/{model}"]
    assert error is not None
    assert error.startswith("InvalidArgumentError")
    assert "must have the same size and shape" in error
    assert "Input 0: [8,8] != input 1: [7,8]" in error


torch_only = pytest.mark.skipif(BACKEND != "torch", reason="torch DDP only")


@torch_only
@pytest.mark.parametrize("case", ["stochastic_depth", "stochastic_depth_row"])
def test_torch_ddp_rate_zero_equals_single_process(torch_result, case):
    run = torch_result["cases"][f"{case}/0.0"]
    np.testing.assert_allclose(run["ddp_loss"], run["single_loss"], rtol=TOL)
    assert run["weight_diff"] < TOL
    assert run["rank_weight_diff"] == 0.0


@torch_only
def test_torch_ddp_batch_mode_equals_single_process(torch_result):
    # Same seeds on both ranks: one shared decision per step, the one a
    # single process takes, so the runs match step for step.
    run = torch_result["cases"]["stochastic_depth/0.5"]
    np.testing.assert_allclose(run["ddp_loss"], run["single_loss"], rtol=TOL)
    assert run["weight_diff"] < TOL
    assert run["rank_weight_diff"] == 0.0


@torch_only
def test_torch_ddp_row_mode_trains_in_sync(torch_result):
    run = torch_result["cases"]["stochastic_depth_row/0.5"]
    assert run["rank_weight_diff"] == 0.0  # DDP kept the ranks equal
    assert np.mean(run["ddp_loss"][-3:]) < 0.5 * run["ddp_loss"][0], run


@torch_only
def test_torch_ddp_batch_mode_decisions_agree_across_ranks(torch_result):
    first, second = torch_result["decisions"]
    for key in ("residual_kept", "drop_path_kept"):
        assert first[key] == second[key]
        assert 4 <= sum(first[key]) <= 20, first[key]


@torch_only
@pytest.mark.parametrize("name", sorted(ReplicaDraws.COLUMNS))
def test_torch_ddp_per_sample_draws_differ_across_ranks(torch_result, name):
    # Same seeds on both ranks; each rank folds its rank into the seed, so
    # the two ranks' draws of one step differ.
    first, second = (d["draws"][name] for d in torch_result["decisions"])
    same = sum(a == b for a, b in zip(first["values"], second["values"]))
    assert same <= CHANCE_LIMIT[name], (first["values"], second["values"])
    if name in ReplicaDraws.KEPT:
        kept = first["kept"] + second["kept"]
        _assert_kept_binomial(name, kept, first["draws"])


@torch_only
def test_torch_ddp_gradient_noise_keeps_ranks_equal(torch_result):
    # GradientNoise adds its noise after DDP's all-reduce, from the same
    # seed on every rank: the ranks stay identical, and equal the single
    # process that noises the full-batch gradient.
    run = torch_result["cases"]["stochastic_depth/0.0/noise"]
    assert run["rank_weight_diff"] == 0.0
    assert run["weight_diff"] < TOL
    np.testing.assert_allclose(run["ddp_loss"], run["single_loss"], rtol=TOL)
    plain = torch_result["cases"]["stochastic_depth/0.0"]["ddp_loss"]
    assert np.max(np.abs(np.subtract(run["ddp_loss"], plain))) > 1e-4


jax_only = pytest.mark.skipif(BACKEND != "jax", reason="jax ModelParallel only")
MAX_NORM = 0.5


@jax_only
def test_jax_model_parallel_trains_and_restores(jax_result):
    # ModelParallel (2 batch x 4 model), hidden Dense kernels split over
    # their units, with DropPath, MaxNorm, EarlyStoppingRestore and EMA.
    run = jax_result["model_parallel"]
    assert run["loss"][-1] < 0.5 * run["loss"][0], run["loss"]
    assert run["restored"] and run["restore_error"] == 0.0
    sharded = [None, "model"]
    layouts = run["layouts"]
    kernels = [
        spec
        for name, spec in zip(layouts["names"], layouts["weights"])
        if name.startswith("hidden") and name.endswith("kernel")
    ]
    assert kernels == [sharded, sharded]
    # The restored weights keep their layouts.
    assert run["final_weights"] == layouts["weights"]


@jax_only
def test_jax_model_parallel_max_norm_holds_per_unit(jax_result):
    for name, norms in jax_result["model_parallel"]["unit_norms"].items():
        assert max(norms) <= MAX_NORM + 1e-5, (name, norms)
        # The bound was active: some unit sits on it.
        assert max(norms) > MAX_NORM - 1e-3, (name, norms)


@jax_only
def test_jax_model_parallel_averages_have_their_variables_sharding(
    jax_result,
):
    layouts = jax_result["model_parallel"]["layouts"]
    for weight, average in zip(layouts["weights"], layouts["averages"]):
        if average is not None:  # EMA averages the trainable weights
            assert average == weight, layouts
    # A device-side snapshot (WeightSnapshot(kind="copy"), the accelerator
    # path) keeps every variable's sharding too.
    assert layouts["copy_snapshot"] == layouts["weights"]


@jax_only
def test_jax_model_parallel_snapshot_has_its_variables_sharding(jax_result):
    layouts = jax_result["model_parallel"]["layouts"]
    assert layouts["snapshot"] == layouts["weights"], layouts["snapshot_kind"]
