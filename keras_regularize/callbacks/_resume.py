"""State that survives a `keras.callbacks.BackupAndRestore` resume.

`BackupAndRestore` saves the model's weights and the epoch into its
`backup_dir` (at epoch ends, or every `save_freq` batches), loads them in
its `on_train_begin`, and deletes the directory when training ends. The
callbacks of this package that keep state across epochs
(`EarlyStoppingRestore`, the weight-averaging callbacks) write that state
into the same directory at the same moments, one file per callback
(`keras_regularize.<Class>-<n>.npz`, `n` counting callbacks of that class
in the callback list), atomically (temporary file, `fsync`, rename). The
files go when the directory goes; nothing else is for the user to manage.

How the moments are matched, whatever the order of the callbacks:

- While `fit` builds its callback list, each resumable callback finds the
  `BackupAndRestore` instances in it (`set_model` is called by the list)
  and wraps their `on_train_begin`, `on_epoch_end` and `on_train_batch_end`
  (instance attributes, removed when training ends).
- After `BackupAndRestore` saved (its hook called `model.save_weights`),
  its `training_metadata.json` names the save (`epoch`, `batch`). Each
  callback that is done with that moment (it has handled the epoch end
  already, or the save was a mid-epoch one) writes its file now, tagged
  with the save; one listed after `BackupAndRestore` writes it at the end
  of its own `on_epoch_end`, so the file holds that epoch too.
- After `BackupAndRestore.on_train_begin` loaded a backup, each callback's
  file tagged with the loaded save is read and the state handed over: at
  once if its `on_train_begin` already ran, else in place of the reset
  that `on_train_begin` does.

A file tagged with an older save than the backup (the process died between
`BackupAndRestore`'s save and the end of a later callback's `on_epoch_end`)
is used with a warning: the state then misses that one epoch. A newer one
is ignored with a warning. `double_checkpoint=True` keeps the previous file
as `<name>.bkp`, read when `BackupAndRestore` falls back to its previous
backup.
"""

import io
import json
import os
import sys
import warnings
import weakref

import keras
import numpy as np

from keras_regularize._checkpoint import atomic_write

METADATA = "training_metadata.json"
PREFIX = "keras_regularize."

# model -> _Hub of the fit being set up or running.
_HUBS = weakref.WeakKeyDictionary()


def _callback_list():
    """The `keras.callbacks.CallbackList` calling `set_model`, if any."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            return owner
        frame = frame.f_back
    return None


def _read_metadata(directory):
    try:
        with open(os.path.join(directory, METADATA)) as f:
            data = json.load(f)
        return int(data["epoch"]), int(data.get("batch", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_state_file(path, meta, arrays):
    """Writes `meta` (JSON) and `arrays` to the `.npz` `path` atomically."""

    def write(temporary):
        buffer = io.BytesIO()
        payload = {f"a{i}": np.asarray(a) for i, a in enumerate(arrays)}
        payload["meta"] = np.frombuffer(
            json.dumps(meta).encode("utf-8"), dtype=np.uint8
        )
        np.savez(buffer, **payload)
        with open(temporary, "wb") as f:
            f.write(buffer.getbuffer())

    atomic_write(path, write, suffix=".npz", kind="callback state")


def load_state_file(path):
    """`(meta, arrays)` of a file `save_state_file` wrote, or `None`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            count = len([k for k in data.files if k != "meta"])
            arrays = [data[f"a{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError):
        return None
    return meta, arrays


class _Hub:
    """The resumable callbacks and `BackupAndRestore`s of one fit."""

    def __init__(self, model, callback_list):
        self.model = model
        self.list = weakref.ref(callback_list) if callback_list else None
        self.callbacks = []
        self.backups = []
        self.deferred = {}  # id(callback) -> (directory, save tag)

    def key(self, callback):
        same = [c for c in self.callbacks if type(c) is type(callback)]
        return f"{type(callback).__name__}-{same.index(callback)}"

    def add(self, callback):
        if callback not in self.callbacks:
            self.callbacks.append(callback)
        callback_list = self.list() if self.list is not None else None
        if callback_list is None:
            return
        for other in callback_list.callbacks:
            if isinstance(other, keras.callbacks.BackupAndRestore):
                if other not in self.backups:
                    self._wrap(other)
                    self.backups.append(other)

    # -- BackupAndRestore hooks -------------------------------------------

    def _wrap(self, backup):
        hub = self

        def saving(name):
            original = getattr(type(backup), name).__get__(backup)

            def hook(*args, **kwargs):
                saved = []
                model = hub.model
                real = model.save_weights

                def save_weights(*a, **k):
                    saved.append(True)
                    return real(*a, **k)

                model.__dict__["save_weights"] = save_weights
                try:
                    original(*args, **kwargs)
                finally:
                    if model.__dict__.get("save_weights") is save_weights:
                        del model.__dict__["save_weights"]
                if saved:
                    epoch = args[0] if name == "on_epoch_end" else None
                    hub.saved(backup, epoch)

            hook._keras_regularize_resume = True
            return hook

        def on_train_begin(logs=None):
            type(backup).on_train_begin(backup, logs)
            hub.loaded(backup)

        on_train_begin._keras_regularize_resume = True
        backup.__dict__["on_train_begin"] = on_train_begin
        backup.__dict__["on_epoch_end"] = saving("on_epoch_end")
        backup.__dict__["on_train_batch_end"] = saving("on_train_batch_end")

    def unwrap(self):
        names = ("on_train_begin", "on_epoch_end", "on_train_batch_end")
        for backup in self.backups:
            for name in names:
                hook = backup.__dict__.get(name)
                if getattr(hook, "_keras_regularize_resume", False):
                    del backup.__dict__[name]
        self.backups = []

    def _path(self, backup, callback):
        return os.path.join(
            backup.backup_dir, f"{PREFIX}{self.key(callback)}.npz"
        )

    def saved(self, backup, epoch):
        """`backup` just saved (at the end of `epoch`, or mid-epoch)."""
        tag = _read_metadata(backup.backup_dir)
        if tag is None:
            return
        for callback in self.callbacks:
            if epoch is not None and callback._resume_done != epoch:
                # Listed after the backup: written at its own epoch end.
                self.deferred[id(callback)] = (backup, tag)
                continue
            self._write(backup, callback, tag)

    def epoch_done(self, callback, epoch):
        """`callback` finished its `on_epoch_end` of `epoch`."""
        callback._resume_done = epoch
        deferred = self.deferred.pop(id(callback), None)
        if deferred is not None:
            self._write(deferred[0], callback, deferred[1])

    def _write(self, backup, callback, tag):
        path = self._path(backup, callback)
        if getattr(backup, "double_checkpoint", False) and os.path.exists(path):
            old = load_state_file(path)
            if old is not None and tuple(old[0].get("save", ())) != tag:
                os.replace(path, path + ".bkp")
        meta, arrays = callback._resume_state()
        meta = dict(meta, save=list(tag), done=callback._resume_done)
        save_state_file(path, meta, arrays)

    def loaded(self, backup):
        """`backup.on_train_begin` ran: hand each callback its state."""
        tag = _read_metadata(backup.backup_dir)
        if tag is None:
            return
        for callback in self.callbacks:
            path = self._path(backup, callback)
            found = [load_state_file(p) for p in (path, path + ".bkp")]
            found = [f for f in found if f is not None]
            exact = [f for f in found if tuple(f[0].get("save", ())) == tag]
            older = [f for f in found if tuple(f[0].get("save", ())) < tag]
            name = self.key(callback)
            if exact:
                meta, arrays = exact[0]
            elif older:
                meta, arrays = max(older, key=lambda f: f[0]["save"])
                warnings.warn(
                    f"{name}: the state saved with the backup in "
                    f"{backup.backup_dir!r} is from an earlier save "
                    f"(epoch, batch)={tuple(meta['save'])} than the weights "
                    f"{tag} (the run stopped between the two); resuming "
                    "with it, so the epochs in between are not counted.",
                    stacklevel=2,
                )
            else:
                if found:
                    warnings.warn(
                        f"{name}: the state file in {backup.backup_dir!r} "
                        "belongs to a later backup than the weights; "
                        "starting afresh.",
                        stacklevel=2,
                    )
                continue
            callback._resume_done = meta.get("done")
            callback._resume_load(meta, arrays)


def register(callback, model):
    """Called from a resumable callback's `set_model`."""
    if model is None:
        return
    callback_list = _callback_list()
    try:
        hub = _HUBS.get(model)
    except TypeError:  # an unhashable model
        return
    if callback_list is not None and (
        hub is None or hub.list is None or hub.list() is not callback_list
    ):
        if hub is not None:
            hub.unwrap()
        hub = _Hub(model, callback_list)
        _HUBS[model] = hub
    elif hub is None:
        hub = _Hub(model, None)
        _HUBS[model] = hub
    hub.add(callback)
    callback._resume_hub = hub


def epoch_done(callback, epoch):
    """Called at the end of a resumable callback's `on_epoch_end`."""
    hub = getattr(callback, "_resume_hub", None)
    if hub is None:
        callback._resume_done = epoch
        return
    hub.epoch_done(callback, epoch)


def finished(callback):
    """Called when a resumable callback's `fit` ends."""
    hub = getattr(callback, "_resume_hub", None)
    callback._resume_hub = None
    if hub is None:
        return
    if callback in hub.callbacks:
        hub.callbacks_done = getattr(hub, "callbacks_done", 0) + 1
        if hub.callbacks_done >= len(hub.callbacks):
            hub.unwrap()
