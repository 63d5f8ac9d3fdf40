"""EarlyStoppingRestore checkpoints under SIGKILL, SIGINT and a read-only
directory, on the current backend.

The kills run in `_worker.py` subprocesses: one process forks a fresh
training child per kill and checks every surviving checkpoint at the end.
"""

import os

import keras
import pytest

from tests.distributed._launch import run_worker

BACKEND = keras.backend.backend()
KILLS = 24


@pytest.fixture(scope="module")
def sigkill_result(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sigkill")
    env = {}
    if BACKEND == "jax":
        # Each child compiles the same train step: share it through JAX's
        # on-disk cache instead of compiling it 24 times.
        env = {
            "JAX_COMPILATION_CACHE_DIR": str(directory / "jax-cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }
    return run_worker(
        "sigkill", {"directory": str(directory), "kills": KILLS}, **env
    )


def test_sigkill_leaves_a_best_epoch_checkpoint(sigkill_result):
    matches = sigkill_result["matches"]
    assert len(matches) == KILLS
    # The first child may die before its first write; after that a file
    # always exists, loads, and holds the weights of a best epoch.
    assert all(m is not None for m in matches[1:]), matches
    assert "no match" not in matches, matches
    previous = None
    for run, match in enumerate(matches):
        if match is None:
            continue
        # Either a best epoch of the child just killed, or (killed before
        # its first write finished) the file it found, unchanged.
        assert match[0] == run or match == previous, (run, matches)
        previous = match
    # New files keep arriving: most children finish at least one write.
    assert len({tuple(m) for m in matches if m}) >= KILLS // 2, matches


def test_sigkill_lands_during_writes(sigkill_result):
    # A kill that left a temporary file interrupted a write in progress;
    # without these the test above would prove little.
    assert sigkill_result["mid_write"] >= KILLS // 4, sigkill_result


@pytest.fixture(scope="module")
def sigint_result(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sigint")
    return run_worker("sigint", {"directory": str(directory), "repeats": 6})


def test_keyboard_interrupt_leaves_best_weights(sigint_result):
    assert len(sigint_result) == 6
    for run in sigint_result:
        assert run["interrupted"], run
        assert run["stop_reason"] == "interrupted", run
        assert run["best_epoch"] in run["best_epochs"], run
        assert run["model_is_best"], run
    # The interrupts hit different points of training.
    assert len({r["best_epoch"] for r in sigint_result}) >= 2, sigint_result


@pytest.fixture(scope="module")
def read_only_result():
    return run_worker("read_only", {"after_epoch": 3})


def test_read_only_directory_gives_clear_error(read_only_result):
    result = read_only_result
    if os.geteuid() == 0:
        assert result["dropped_root"]  # else chmod would not bind
    error = result["error"]
    assert error is not None, result
    assert error.startswith("OSError: EarlyStoppingRestore could not write")
    assert repr(result["checkpoint"]) in error
    assert "Permission denied" in error
    # The failing write came after the directory turned read-only.
    assert result["best_epoch"] > result["after_epoch"]


def test_read_only_directory_keeps_previous_best(read_only_result):
    result = read_only_result
    assert result["file_is_last_best_before"], result
    assert result["files"] == ["best.weights.h5"]  # no temporary left
    # The model holds the newest best weights (kept in memory).
    assert result["model_is_best"], result
    assert result["stop_reason"] == "interrupted"
