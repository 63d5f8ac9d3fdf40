"""EarlyStoppingRestore under SIGKILL, SIGINT and a read-only directory.

Run by `early_stopping_restore_faults_test.py` in a fresh Python process
(kills and dropped privileges must not touch the test process):

    KERAS_BACKEND=jax python tests/callbacks/_faults_worker.py sigkill \
        '{"directory": "/tmp/kills", "kills": 24}'

Each command prints one JSON line of raw facts after `RESULT `: the scores
every epoch logged, which recorded epochs a checkpoint or a model's weights
equal, flags and error texts. The test decides what is right.
"""

import os
import time

import keras
import numpy as np

import keras_regularize as kr
from tests.distributed._launch import serve


def _data(n=16, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) / 4.0).astype("float32")


def _fault_model(seed=0):
    """About 70k weights, so that a checkpoint write takes a moment."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(256, activation="tanh"),
            kr.layers.DropPath(0.2, seed=seed),
            keras.layers.Dense(256, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _flat(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


class Recorder(keras.callbacks.Callback):
    """Scripts a random monitor value and saves each epoch's weights.

    Runs before EarlyStoppingRestore: the record of epoch `e` is complete
    (written to a temporary name, then renamed) before the checkpoint of
    epoch `e` is started, and one byte on `signal_fd` tells the parent that
    a checkpoint write may follow.
    """

    def __init__(self, directory, run, signal_fd, seed):
        super().__init__()
        self.directory = directory
        self.run = run
        self.signal_fd = signal_fd
        self.rng = np.random.default_rng(seed)

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = float(self.rng.uniform())
        path = os.path.join(self.directory, f"run{self.run}_epoch{epoch}")
        np.savez(
            path + ".tmp.npz", weights=_flat(self.model), score=logs["score"]
        )
        os.replace(path + ".tmp.npz", path + ".npz")
        if self.signal_fd is not None:
            os.write(self.signal_fd, b"e")


def _records(directory, run):
    """`(score, flat weights)` of every epoch `Recorder` saved for `run`."""
    records = []
    while True:
        path = os.path.join(directory, f"run{run}_epoch{len(records)}.npz")
        if not os.path.exists(path):
            return records
        record = np.load(path)
        records.append((float(record["score"]), record["weights"]))


def _equal_epochs(records, flat):
    """The epochs whose recorded weights equal `flat`."""
    return [e for e, (_, w) in enumerate(records) if np.array_equal(w, flat)]


def _fault_child(directory, run, signal_fd, holder=None, epochs=10_000):
    model = _fault_model(seed=run)
    x, y = _data()
    stop = kr.callbacks.EarlyStoppingRestore(
        monitor="score",
        mode="min",
        patience=epochs,
        checkpoint_path=os.path.join(directory, "best.weights.h5"),
    )
    recorder = Recorder(directory, run, signal_fd, seed=run)
    if holder is not None:
        holder.update(model=model, stop=stop)
    with stop.restore_on_error():
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=epochs,
            callbacks=[recorder, stop],
            verbose=0,
        )
    return model, stop


def _announce_writes(signal_fd, pause=0.2):
    """Makes this (child) process report each checkpoint write on `signal_fd`.

    `w` goes out just before `keras.saving.save_weights` starts, so a parent
    that waits for it can kill the child somewhere in the write; `r` goes
    out once the temporary file is complete, and the child then waits
    `pause` seconds before the rename, so a parent that kills on `r` lands
    between the write and the rename however loaded the machine is.
    """
    save = keras.saving.save_weights

    def announced(*args, **kwargs):
        os.write(signal_fd, b"w")
        result = save(*args, **kwargs)
        os.write(signal_fd, b"r")
        time.sleep(pause)
        return result

    keras.saving.save_weights = announced


def sigkill(kills=20, seed=0, directory=None):
    """Kills training children with SIGKILL at random moments.

    This process imports Keras once, then forks one child per kill (no
    framework computation runs here before the forks). Kills take turns:
    one lands just after a child's temporary file is complete and before
    its rename (`r`, a write interrupted at its last step, whatever the
    machine's load); one a random 0-3 ms after a write started (`w`,
    anywhere in the write); one a random 0-30 ms after an epoch end (`e`).
    Each kill leaves the checkpoint that the next child overwrites, so
    every surviving file is copied aside and loaded at the end.

    Returns `scores[run]` (every epoch's score), `matches[run]` (the
    `[run, epoch]` records equal to the file left after kill `run`, `None`
    when there was no file) and `mid_write` (kills that left a temporary
    file behind).
    """
    import random
    import shutil
    import signal

    rng = random.Random(seed)
    kept = os.path.join(directory, "kept")
    os.makedirs(kept)
    checkpoint = os.path.join(directory, "best.weights.h5")
    mid_write = 0
    for run in range(kills):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                _announce_writes(write_fd)
                _fault_child(directory, run, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        if run % 3 == 0:
            wanted, count, delay = b"r", rng.randint(1, 2), 0.0
        elif run % 3 == 1:
            wanted, count, delay = b"w", rng.randint(1, 2), 0.003
        else:
            wanted, count, delay = b"e", rng.randint(1, 4), 0.03
        while count:
            byte = os.read(read_fd, 1)
            if not byte:
                break
            count -= byte == wanted
        time.sleep(rng.uniform(0.0, delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        temporary = [f for f in os.listdir(directory) if f".tmp-{pid}" in f]
        mid_write += bool(temporary)
        for name in temporary:
            os.remove(os.path.join(directory, name))
        if os.path.exists(checkpoint):
            shutil.copy(checkpoint, os.path.join(kept, f"kill{run}.weights.h5"))
    # Now load every surviving checkpoint into a fresh model.
    records = [_records(directory, run) for run in range(kills)]
    model = _fault_model()
    model.optimizer.build(model.trainable_variables)
    matches = []
    for run in range(kills):
        path = os.path.join(kept, f"kill{run}.weights.h5")
        if not os.path.exists(path):
            matches.append(None)
            continue
        model.load_weights(path)
        flat = _flat(model)
        matches.append(
            [
                [r, e]
                for r, runs in enumerate(records)
                for e in _equal_epochs(runs, flat)
            ]
        )
    return {
        "kills": kills,
        "mid_write": mid_write,
        "scores": [[s for s, _ in runs] for runs in records],
        "matches": matches,
    }


def _sigint_child(directory, run, epochs, delay):
    """One interrupted `fit` (in a forked child); returns its facts."""
    import signal
    import threading

    read_fd, write_fd = os.pipe()
    sent = []

    def interrupt():
        for _ in range(epochs):
            os.read(read_fd, 1)
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)
        sent.append(delay)
        # CPython drops a KeyboardInterrupt raised inside a finalizer
        # (e.g. a weakref callback, "Exception ignored in ..."), and
        # training goes on: press Ctrl-C again at the next epoch end, as a
        # user would. The pipe closes once `fit` has returned.
        while os.read(read_fd, 1):
            os.kill(os.getpid(), signal.SIGINT)
            sent.append(0.0)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    holder = {}
    try:
        _fault_child(directory, run, write_fd, holder)
    except KeyboardInterrupt:
        interrupted = True
    else:
        interrupted = False
    os.close(write_fd)
    thread.join()
    stop = holder["stop"]
    records = _records(directory, run)
    return {
        "interrupted": interrupted,
        "sigints": len(sent),
        "stop_reason": stop.stop_reason,
        "best_epoch": stop.best_epoch,
        "scores": [s for s, _ in records],
        "model_matches": _equal_epochs(records, _flat(holder["model"])),
    }


def sigint(directory=None, repeats=5, seed=0, patience=90.0, retries=3):
    """SIGINT (Ctrl-C) at random moments of `fit`.

    Each repeat forks a child that trains a fresh model and is interrupted
    a random 0-20 ms after its 1st to 4th epoch end, so the interrupt lands
    in a training step, a callback or a checkpoint write. Returns, per
    repeat, the callback's state, the scores logged and the epochs whose
    recorded weights equal the model's weights afterwards.

    An asynchronous interrupt can also land inside the framework's own
    C++ or finalizer code and leave it deadlocked (seen once in
    TensorFlow's `make_iterator`): a child still alive `patience` seconds
    after it started is killed and the repeat is drawn again, at most
    `retries` times. The result's `hangs` lists, per such child, the
    innermost frames of its main thread, so the test can tell where.
    """
    import faulthandler
    import json
    import signal

    rng = np.random.default_rng(seed)
    runs, hangs = [], []
    attempt = 0
    while len(runs) < repeats:
        run = attempt
        attempt += 1
        epochs, delay = int(rng.integers(1, 5)), float(rng.uniform(0, 0.02))
        out = os.path.join(directory, f"sigint{run}.json")
        stacks = os.path.join(directory, f"sigint{run}.stacks")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with open(stacks, "w") as stack_file:
                    # Not `dump_traceback_later`: its watchdog thread did
                    # not survive the fork, and re-arming it would hang.
                    faulthandler.register(signal.SIGUSR1, file=stack_file)
                    facts = _sigint_child(directory, run, epochs, delay)
                with open(out, "w") as f:
                    json.dump(facts, f)
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + patience
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            with open(stacks) as f:
                hangs.append(f.read()[-4000:])
            if len(hangs) > retries:
                break
            continue
        if status != 0 or not os.path.exists(out):
            raise RuntimeError(f"sigint child {run} exited with {status}")
        with open(out) as f:
            runs.append(json.load(f))
    return {"runs": runs, "hangs": hangs}


_NOBODY = (65534, 65534)


def _drop_root():
    """Runs the rest of this process as `nobody` (uid 65534).

    Root ignores permission bits, so a directory made read-only with
    `chmod` would stay writable to it; an unprivileged user is held to
    them, as a training job on a shared file system would be.
    """
    os.setgroups([])
    os.setgid(_NOBODY[1])
    os.setuid(_NOBODY[0])


class MakeReadOnly(keras.callbacks.Callback):
    """Makes the checkpoint directory read-only after epoch `epoch`."""

    def __init__(self, directory, epoch, stop):
        super().__init__()
        self.directory = directory
        self.epoch = epoch
        self.stop = stop

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            # Checkpoints are written on a worker thread: the ones started
            # before this epoch end land first, so "before" is well defined.
            self.stop._writer.wait()
            os.chmod(self.directory, 0o555)


def read_only(after_epoch=3):
    """A checkpoint directory that becomes read-only during `fit`.

    Returns the error `fit` raised, the callback's state, the scores
    logged, the epochs whose recorded weights equal the checkpoint file
    and the model afterwards, and the files left in the directory.
    """
    import shutil
    import tempfile

    # Not under pytest's root-only (0700) tree: `nobody` must reach it.
    base = tempfile.mkdtemp(prefix="kr-read-only-")
    records_dir = os.path.join(base, "records")
    directory = os.path.join(base, "checkpoints")
    checkpoint = os.path.join(directory, "best.weights.h5")
    # Everything that loads lazily (h5py, zip codecs) is loaded now: as
    # `nobody` this process may not read the interpreter's own files.
    x, y = _data()
    _fault_model().fit(x, y, epochs=1, verbose=0)
    model = _fault_model()
    os.makedirs(records_dir)
    os.makedirs(directory)
    model.save_weights(checkpoint)
    model.load_weights(checkpoint)
    # The background writer's thread and its temporary-file names too.
    warm = kr.callbacks.EarlyStoppingRestore(
        monitor="loss", patience=100, checkpoint_path=checkpoint
    )
    _fault_model().fit(x, y, epochs=1, callbacks=[warm], verbose=0)
    np.savez(os.path.join(records_dir, "warm.npz"), weights=_flat(model))
    np.load(os.path.join(records_dir, "warm.npz"))["weights"]
    os.remove(checkpoint)
    dropped = False
    if os.geteuid() == 0:
        for path in (base, records_dir, directory):
            os.chown(path, *_NOBODY)
        _drop_root()
        dropped = True
    stop = kr.callbacks.EarlyStoppingRestore(
        monitor="score", mode="min", patience=100, checkpoint_path=checkpoint
    )
    recorder = Recorder(records_dir, 0, None, seed=3)
    chmod = MakeReadOnly(directory, after_epoch, stop)
    error = None
    try:
        with stop.restore_on_error():
            model.fit(
                x,
                y,
                batch_size=16,
                epochs=50,
                callbacks=[recorder, chmod, stop],
                verbose=0,
            )
    except OSError as caught:
        error = f"{type(caught).__name__}: {caught}"
    try:
        records = _records(records_dir, 0)
        saved = _fault_model()
        saved.load_weights(checkpoint)
        return {
            "dropped_root": dropped,
            "checkpoint": checkpoint,
            "error": error,
            "best_epoch": stop.best_epoch,
            "stop_reason": stop.stop_reason,
            "after_epoch": after_epoch,
            "scores": [s for s, _ in records],
            "checkpoint_matches": _equal_epochs(records, _flat(saved)),
            "model_matches": _equal_epochs(records, _flat(model)),
            "files": sorted(os.listdir(directory)),
        }
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(base)


COMMANDS = {"sigkill": sigkill, "sigint": sigint, "read_only": read_only}

if __name__ == "__main__":
    serve(COMMANDS)
