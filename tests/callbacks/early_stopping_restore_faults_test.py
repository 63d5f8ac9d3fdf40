"""EarlyStoppingRestore checkpoints under SIGKILL, SIGINT and a read-only
directory, on the current backend.

The kills run in `_faults_worker.py` subprocesses: one process forks a
fresh training child per kill and reports, for every surviving checkpoint,
which recorded epochs it equals. The assertions are made here.
"""

import os

import keras
import pytest

from tests.distributed._launch import run_worker

BACKEND = keras.backend.backend()
# What a SIGKILL or a read-only directory meets is the atomic file write of
# `_checkpoint.py`, the same on every backend: those run once (nox's
# tests(tensorflow)). A SIGINT meets each backend's own step guard, so the
# interrupt tests run on every backend.
file_faults = pytest.mark.backend_independent
KILLS = 24
WORKER = os.path.join(os.path.dirname(__file__), "_faults_worker.py")


def _best_epochs(scores):
    """Epochs whose score beat every earlier one (the callback's bests)."""
    best, low = [], float("inf")
    for epoch, score in enumerate(scores):
        if score < low:
            best.append(epoch)
            low = score
    return best


def _jax_cache(directory):
    """Env that makes JAX children share compiled steps through a cache."""
    if BACKEND != "jax":
        return {}
    # Each child compiles the same train step: share it through JAX's
    # on-disk cache instead of compiling it once per child.
    return {
        "JAX_COMPILATION_CACHE_DIR": str(directory / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@pytest.fixture(scope="module")
def sigkill_result(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sigkill")
    return run_worker(
        WORKER,
        "sigkill",
        {"directory": str(directory), "kills": KILLS},
        **_jax_cache(directory),
    )


def _sigkill_matches(result):
    """Per kill: the first best record the surviving file equals.

    `None` where no file was left, `"no match"` where the file equals no
    best epoch of any run.
    """
    best = {
        (run, epoch)
        for run, scores in enumerate(result["scores"])
        for epoch in _best_epochs(scores)
    }
    matches = []
    for equal in result["matches"]:
        if equal is None:
            matches.append(None)
            continue
        found = [m for m in equal if tuple(m) in best]
        matches.append(found[0] if found else "no match")
    return matches


@file_faults
def test_sigkill_leaves_a_best_epoch_checkpoint(sigkill_result):
    matches = _sigkill_matches(sigkill_result)
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
    # New files keep arriving. Writes run on a worker thread, so a kill
    # soon after an epoch end often lands before that write finished.
    assert len({tuple(m) for m in matches if m}) >= KILLS // 3, matches


@file_faults
def test_sigkill_lands_during_writes(sigkill_result):
    # A kill that left a temporary file interrupted a write in progress;
    # without these the test above would prove little.
    assert sigkill_result["mid_write"] >= KILLS // 4, sigkill_result


@pytest.fixture(scope="module")
def sigint_result(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sigint")
    return run_worker(
        WORKER,
        "sigint",
        {"directory": str(directory), "repeats": 6},
        timeout=420,
        **_jax_cache(directory),
    )


def _innermost_frames(stacks):
    """The innermost `File ...` line of every thread in a faulthandler dump."""
    frames, header = [], False
    for line in stacks.splitlines():
        if line.startswith(("Thread ", "Current thread ")):
            header = True
        elif header and line.strip().startswith("File "):
            frames.append(line.strip())
            header = False
    return frames


def test_keyboard_interrupt_leaves_best_weights(sigint_result):
    runs = sigint_result["runs"]
    assert len(runs) == 6, sigint_result["hangs"]
    for run in runs:
        assert run["interrupted"], run
        assert run["stop_reason"] == "interrupted", run
        # The interrupt may land after the recorder saw an epoch and
        # before the callback did: the callback's own best epoch must be
        # one of the recorded best epochs, and the model must hold it.
        if run["best_epoch"] is None:
            # Interrupted before the callback finished its first epoch:
            # there is no best to restore, and the model keeps the weights
            # it trained to.
            assert len(run["scores"]) == 1, run
            assert run["model_matches"] == [0], run
            continue
        assert run["best_epoch"] in _best_epochs(run["scores"]), run
        assert run["best_epoch"] in run["model_matches"], run
    # The interrupts hit different points of training.
    assert len({r["best_epoch"] for r in runs} - {None}) >= 2, runs


def test_a_child_stuck_after_an_interrupt_is_stuck_outside_the_package(
    sigint_result,
):
    # Redrawn repeats are tolerated only where the framework itself hung
    # (an asynchronous Ctrl-C inside its C++ or finalizer code): no thread
    # may be waiting inside keras_regularize.
    for stacks in sigint_result["hangs"]:
        frames = _innermost_frames(stacks)
        assert frames, stacks
        assert not any("keras_regularize" + os.sep in f for f in frames), stacks


@pytest.fixture(scope="module")
def read_only_result():
    return run_worker(WORKER, "read_only", {"after_epoch": 3})


@file_faults
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


@file_faults
def test_read_only_directory_keeps_previous_best(read_only_result):
    result = read_only_result
    best = _best_epochs(result["scores"])
    last_before = max(e for e in best if e <= result["after_epoch"])
    assert last_before in result["checkpoint_matches"], result
    assert result["files"] == ["best.weights.h5"]  # no temporary left
    # The model holds the newest best weights (kept in memory).
    assert result["best_epoch"] in best, result
    assert result["best_epoch"] in result["model_matches"], result
    assert result["stop_reason"] == "interrupted"
