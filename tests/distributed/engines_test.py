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
from tests.distributed._launch import run_worker

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
    # single-device draw.
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


@engines
def test_row_mode_masks_per_sample(request):
    decisions = _result(request)["decisions"]
    # 384 draws at keep 0.5: mean within 0.1 (more than 3.9 sigma).
    assert abs(decisions["row_keep_fraction"] - 0.5) < 0.1
    if BACKEND == "jax":
        # One global mask: the 8 shards of 2 samples are not copies.
        assert decisions["row_shards_identical"] == 0
    else:
        # MirroredStrategy replicates the seed state, so both replicas
        # draw the same per-sample mask for their halves (documented in
        # docs/distributed.md); this pins that behaviour.
        assert decisions["row_shards_identical"] == 24


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
    # Same seed on both ranks: the per-sample masks repeat across ranks
    # too (as under MirroredStrategy; see docs/distributed.md).
    assert first["row_mask"] == second["row_mask"]
