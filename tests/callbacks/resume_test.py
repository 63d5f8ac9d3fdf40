"""Callback state across `keras.callbacks.BackupAndRestore` (see `_resume`)."""

import json
import os

import keras
import numpy as np
import pytest

from keras_regularize.callbacks._resume import load_state_file
from keras_regularize.callbacks.early_stopping_restore import (
    EarlyStoppingRestore,
)
from keras_regularize.callbacks.exponential_moving_average import (
    ExponentialMovingAverage,
)
from keras_regularize.callbacks.stochastic_weight_averaging import (
    StochasticWeightAveraging,
)
from tests.harness import ScriptedMonitor

# val_loss per epoch: best at epoch 2, then two stalls: stops at epoch 4.
SCORES = [3.0, 2.0, 1.0, 1.5, 1.5, 1.5]
EPOCHS = len(SCORES)
STOPPED, BEST = 4, 2


class Interrupt(keras.callbacks.Callback):
    """Raises in the middle of epoch `epoch` (after batch `batch`)."""

    def __init__(self, epoch, batch=1):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise RuntimeError("preempted")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True) / 2.0


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _callbacks():
    return {
        "stop": EarlyStoppingRestore(monitor="val_loss", patience=2),
        "ema": ExponentialMovingAverage(decay=0.5, evaluate=False),
        "swa": StochasticWeightAveraging(start_epoch=1, evaluate=False),
    }


def _fit(model, ours, backup=None, interrupt=None, backup_first=True):
    script = ScriptedMonitor(SCORES)
    extra = [interrupt] if interrupt is not None else []
    tail = [script, ours["stop"], ours["ema"], ours["swa"]]
    if backup is None:
        callbacks = tail + extra
    elif backup_first:
        callbacks = [backup] + tail + extra
    else:
        callbacks = extra + tail + [backup]
    x, y = _data()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=EPOCHS,
        shuffle=False,
        callbacks=callbacks,
        verbose=0,
    )


def _result(model, ours):
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "stopped": ours["stop"].stopped_epoch,
        "best": ours["stop"].best_epoch,
        "ema": ours["ema"].get_state(),
        "swa": ours["swa"].get_state(),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    model, ours = _model(), _callbacks()
    _fit(model, ours)
    results = {"plain": _result(model, ours)}
    for backup_first in (True, False):
        directory = str(tmp_path_factory.mktemp("backup"))
        # Interrupted in the middle of epoch 3, after the backup of epoch 2.
        model, ours = _model(), _callbacks()
        backup = keras.callbacks.BackupAndRestore(directory)
        with pytest.raises(RuntimeError, match="preempted"):
            _fit(model, ours, backup, Interrupt(3), backup_first)
        files = sorted(os.listdir(directory))
        with open(os.path.join(directory, "training_metadata.json")) as f:
            metadata = json.load(f)
        name = "keras_regularize.EarlyStoppingRestore-0.npz"
        sidecar = load_state_file(os.path.join(directory, name))
        # A new process: fresh model, fresh callbacks, the same directory.
        model, ours = _model(), _callbacks()
        backup = keras.callbacks.BackupAndRestore(directory)
        _fit(model, ours, backup, None, backup_first)
        results[backup_first] = dict(
            _result(model, ours),
            files=files,
            metadata=metadata,
            sidecar=sidecar,
            left=os.path.exists(directory),
        )
    return results


@pytest.mark.parametrize("backup_first", [True, False])
def test_resumed_run_stops_and_restores_as_uninterrupted(runs, backup_first):
    plain, resumed = runs["plain"], runs[backup_first]
    assert plain["stopped"] == STOPPED and plain["best"] == BEST
    assert resumed["stopped"] == STOPPED and resumed["best"] == BEST
    for a, b in zip(plain["weights"], resumed["weights"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backup_first", [True, False])
def test_averages_continue_bit_identically(runs, backup_first):
    plain, resumed = runs["plain"], runs[backup_first]
    for name in ("ema", "swa"):
        assert plain[name]["count"] == resumed[name]["count"]
        for a, b in zip(plain[name]["averages"], resumed[name]["averages"]):
            np.testing.assert_array_equal(a, b)
    assert resumed["swa"]["count"] == STOPPED  # epochs 1..4
    assert resumed["ema"]["count"] == (STOPPED + 1) * 4


@pytest.mark.parametrize("backup_first", [True, False])
def test_state_files_travel_with_the_backup(runs, backup_first):
    resumed = runs[backup_first]
    assert resumed["metadata"]["epoch"] == 3
    ours = [f for f in resumed["files"] if f.startswith("keras_regularize")]
    assert ours == [
        "keras_regularize.EarlyStoppingRestore-0.npz",
        "keras_regularize.ExponentialMovingAverage-0.npz",
        "keras_regularize.StochasticWeightAveraging-0.npz",
    ]
    meta, arrays = resumed["sidecar"]
    # Saved with the backup of epoch 2's end, whichever order: epoch 2
    # counted (best, wait) and its best weights inside.
    assert meta["save"] == [3, 0] and meta["done"] == 2
    assert meta["best_epoch"] == BEST and meta["wait"] == 0
    assert len(arrays) == len(runs["plain"]["weights"])
    # Deleted with BackupAndRestore's directory when training ends.
    assert not resumed["left"]


def test_mid_epoch_backups_carry_the_step_count(tmp_path):
    directory = str(tmp_path / "backup")
    model, ours = _model(), _callbacks()
    backup = keras.callbacks.BackupAndRestore(directory, save_freq=3)
    # 4 steps per epoch; saves after steps 3, 6, 9; stops after step 10.
    with pytest.raises(RuntimeError, match="preempted"):
        _fit(model, ours, backup, Interrupt(2))
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["ema"] = ours["ema"].steps
            seen["best"] = ours["stop"].best_epoch
            seen["wait"] = ours["stop"].wait
            seen["swa"] = ours["swa"]._epochs

        def on_epoch_begin(self, epoch, logs=None):
            seen.setdefault("first", epoch)
            raise RuntimeError("preempted")

    model, ours = _model(), _callbacks()
    backup = keras.callbacks.BackupAndRestore(directory, save_freq=3)
    with pytest.raises(RuntimeError, match="preempted"):
        _fit(model, ours, backup, Probe())
    # The save after step 9 (epoch 2, batch 0): epochs 0 and 1 were seen.
    assert seen == {"ema": 9, "best": 1, "wait": 0, "swa": 1, "first": 2}


def test_resume_without_a_backup_yet_starts_afresh(tmp_path, runs):
    directory = str(tmp_path / "backup")
    model, ours = _model(), _callbacks()
    backup = keras.callbacks.BackupAndRestore(directory)
    with pytest.raises(RuntimeError, match="preempted"):
        _fit(model, ours, backup, Interrupt(0))
    assert not os.path.exists(directory)  # nothing saved yet
    model, ours = _model(), _callbacks()
    backup = keras.callbacks.BackupAndRestore(directory)
    _fit(model, ours, backup)
    result = _result(model, ours)
    assert result["stopped"] == STOPPED and result["best"] == BEST
    for a, b in zip(runs["plain"]["weights"], result["weights"]):
        np.testing.assert_array_equal(a, b)
