"""Tests for keras_regularize._checkpoint (atomic weights files)."""

import os

import h5py
import keras
import numpy as np
import pytest

from keras_regularize._checkpoint import atomic_save_weights
from keras_regularize._checkpoint import ensure_writable
from keras_regularize._checkpoint import temporary_path


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    return model


def _loads_as(path, model):
    fresh = _model(seed=99)
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_writes_a_complete_file_and_nothing_else(tmp_path):
    path = tmp_path / "best.weights.h5"
    model = _model()
    atomic_save_weights(model, path)
    assert os.listdir(tmp_path) == ["best.weights.h5"]
    _loads_as(path, model)
    with h5py.File(path) as f:
        assert "optimizer" in f
    # Overwriting replaces the file whole.
    other = _model(seed=1)
    atomic_save_weights(other, str(path))
    assert os.listdir(tmp_path) == ["best.weights.h5"]
    _loads_as(path, other)


def test_without_optimizer(tmp_path):
    path = tmp_path / "best.weights.h5"
    model = _model()
    atomic_save_weights(model, path, include_optimizer=False)
    with h5py.File(path) as f:
        assert "optimizer" not in f
    _loads_as(path, model)


def test_file_is_invisible_until_complete(tmp_path, monkeypatch):
    # While Keras writes, `path` does not exist yet: the bytes go elsewhere.
    path = tmp_path / "best.weights.h5"
    real_save = keras.saving.save_weights
    seen = []

    def watched(model, filepath, **kwargs):
        real_save(model, filepath, **kwargs)
        seen.append((str(filepath), path.exists()))

    monkeypatch.setattr(keras.saving, "save_weights", watched)
    atomic_save_weights(_model(), path)
    ((written, existed),) = seen
    assert not existed
    assert written != str(path) and os.path.dirname(written) == str(tmp_path)
    assert written.endswith(".weights.h5")


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, OSError])
def test_failure_mid_write_leaves_the_previous_file(
    tmp_path, monkeypatch, error
):
    path = tmp_path / "best.weights.h5"
    first = _model()
    atomic_save_weights(first, path)

    def dying_save(model, filepath, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise error("died half-way")

    monkeypatch.setattr(keras.saving, "save_weights", dying_save)
    raised = OSError if error is OSError else error
    with pytest.raises(raised):
        atomic_save_weights(_model(seed=1), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["best.weights.h5"]  # no temporary left
    _loads_as(path, first)


def test_failed_rename_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "best.weights.h5"
    first = _model()
    atomic_save_weights(first, path)

    def no_replace(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="Permission denied") as info:
        atomic_save_weights(_model(seed=1), path)
    monkeypatch.undo()
    assert repr(str(path)) in str(info.value)
    assert os.listdir(tmp_path) == ["best.weights.h5"]
    _loads_as(path, first)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores permission bits",
)
def test_read_only_directory_gives_a_clear_error(tmp_path):
    directory = tmp_path / "locked"
    directory.mkdir()
    path = directory / "best.weights.h5"
    first = _model()
    atomic_save_weights(first, path)
    directory.chmod(0o555)
    try:
        with pytest.raises(OSError, match="Could not write weights to"):
            atomic_save_weights(_model(seed=1), path)
        with pytest.raises(OSError, match="cannot create files beside"):
            ensure_writable(path)
    finally:
        directory.chmod(0o755)
    assert os.listdir(directory) == ["best.weights.h5"]
    _loads_as(path, first)


def test_unwritable_location_gives_a_clear_error(tmp_path):
    # A regular file where the directory should be: fails even for root.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = blocker / "best.weights.h5"
    with pytest.raises(OSError, match="Could not write weights to") as info:
        atomic_save_weights(_model(), path)
    assert repr(str(path)) in str(info.value)
    assert "Not a directory" in str(info.value)
    with pytest.raises(OSError, match="cannot create files beside") as info:
        ensure_writable(path)
    assert repr(str(path)) in str(info.value)
    assert os.listdir(tmp_path) == ["file"]


def test_ensure_writable_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b" / "best.weights.h5"
    ensure_writable(path)
    assert os.listdir(path.parent) == []


def test_temporary_names_are_unique_and_beside_the_file(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    names = {temporary_path(path) for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert os.path.dirname(name) == str(tmp_path)
        assert f".tmp-{os.getpid()}-" in name and name.endswith(".weights.h5")


@pytest.mark.parametrize("path", ["best.h5", "best.keras", 3, None, b"x"])
def test_bad_path_names_the_argument(path):
    with pytest.raises(ValueError, match="argument `path`") as info:
        atomic_save_weights(_model(), path)
    assert f"Received: path={path!r}" in str(info.value)
