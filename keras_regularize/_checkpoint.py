"""Weights files written atomically: a reader finds a complete file or none."""

import contextlib
import os
import threading
import uuid
import weakref

import keras

from keras_regularize._validation import fail

SUFFIX = ".weights.h5"


def check_weights_path(name, value, expected=f"a path ending in '{SUFFIX}'"):
    """`value` (a string or path-like ending in `.weights.h5`) as a string.

    Raises the package's argument error for `name` otherwise.
    """
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path.endswith(SUFFIX):
        fail(name, expected, value)
    return path


def check_optional_weights_path(name, value):
    """`None`, or `value` checked by `check_weights_path` (a callback's
    optional `checkpoint_path`)."""
    if value is None:
        return None
    return check_weights_path(
        name, value, f"None or a path ending in '{SUFFIX}'"
    )


def _checked(path):
    return check_weights_path("path", path)


def temporary_path(path, suffix=SUFFIX):
    """A name beside `path`, unique to this process and this write.

    Two writers (callbacks, threads, processes) of one `path` never share
    a temporary file, and the last `os.replace` wins. `path` must end in
    `suffix` (`.weights.h5` unless told), which the temporary name keeps.
    """
    if suffix == SUFFIX:
        path = _checked(path)
    stem = path[: -len(suffix)] if suffix else path
    return f"{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex}{suffix}"


def _fsync_directory(directory):
    # Makes a rename durable. Opening a directory fails on some platforms
    # (Windows); the rename itself is still atomic there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_writable(path):
    """Creates the directory of `path` and checks a file can be made there.

    Raises `OSError` naming `path` when it cannot.
    """
    path = _checked(path)
    probe = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise OSError(f"cannot create files beside {path!r}: {error}") from (
            error
        )


def atomic_save_weights(model, path, include_optimizer=True):
    """Writes `model.save_weights` output to `path`, all or nothing.

    The weights go to a temporary file in the same directory, which is
    flushed to disk (`fsync`), renamed over `path` (`os.replace`), and the
    directory is synced so the rename survives a crash. Whatever interrupts
    the write (an exception, `KeyboardInterrupt`, `SIGKILL`), `path` holds
    either the previous complete file or the new one; the temporary file is
    removed when Python gets the chance.

    Args:
        model: A built `keras.Model` (or anything `keras.saving.save_weights`
            takes).
        path: String or path-like ending in `.weights.h5`.
        include_optimizer: Bool. Whether the optimizer's variables are
            saved too.

    Raises:
        OSError: The file could not be written (missing permission, full
            disk); the message names `path`, and a previous file there is
            unchanged.
    """
    path = _checked(path)
    extra = {}
    optimizer = getattr(model, "optimizer", None)
    if not include_optimizer and optimizer is not None:
        extra["objects_to_skip"] = [optimizer]
    atomic_write(
        path,
        lambda temporary: keras.saving.save_weights(model, temporary, **extra),
        kind="weights",
    )


def atomic_write(path, write, suffix=SUFFIX, kind="weights"):
    """Runs `write(temporary)`, then makes the file appear at `path` whole.

    The temporary file (beside `path`, see `temporary_path`) is flushed to
    disk, renamed over `path` and the directory synced: `path` holds the
    previous complete file or the new one, whatever interrupts the write.

    Raises:
        OSError: naming `path` (a previous file there is unchanged).
    """
    temporary = temporary_path(path, suffix)
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(os.path.dirname(os.path.abspath(path)))
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if not isinstance(error, OSError):
            raise
        raise OSError(
            f"Could not write {kind} to {path!r}; a file already there is "
            f"unchanged. Cause: {error}"
        ) from error


# -- writes off the training thread --------------------------------------------

# path (absolute) -> weakref of the writer holding it during a `fit`.
_CLAIMS = {}
_CLAIMS_LOCK = threading.Lock()
# Set on a writer thread while it serializes a snapshot (see `_Values`).
_LOCAL = threading.local()


def _optimizers(model):
    """The model's optimizer and every optimizer it wraps, outer first."""
    chain, seen = [], set()
    optimizer = getattr(model, "optimizer", None)
    while isinstance(optimizer, keras.optimizers.Optimizer):
        if id(optimizer) in seen:
            break
        seen.add(id(optimizer))
        chain.append(optimizer)
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return chain


class _Store:
    """A weights store that hands the snapshot's value of each variable."""

    def __init__(self, store, values):
        self._store = store
        self._values = values

    def __setitem__(self, key, value):
        self._store[key] = self._values.get(id(value), value)

    def __getattr__(self, name):
        return getattr(self._store, name)

    def __getitem__(self, key):
        return self._store[key]

    def __contains__(self, key):
        return key in self._store


def _save_own_variables(obj, original):
    """`obj.save_own_variables` answering from a snapshot on writer threads.

    Keras's weights-file walk calls `save_own_variables(store)` on every
    layer and optimizer; a layer stores its variables themselves (the
    store reads them), an optimizer stores `variable.numpy()` of each of
    its `variables`. On a writer thread both are answered from the values
    captured on the training thread; on any other thread (the training
    thread, a `BackupAndRestore` save) nothing changes.
    """

    def save_own_variables(store):
        values = getattr(_LOCAL, "values", None)
        if values is None:
            return original(store)
        listed = values.optimizers.get(id(obj))
        if listed is not None:
            for i, variable in enumerate(listed):
                store[str(i)] = values.get(id(variable), variable)
            return None
        return original(_Store(store, values))

    save_own_variables._keras_regularize_snapshot = True
    return save_own_variables


class _Values(dict):
    """`id(variable) -> captured value`, plus each optimizer's list."""

    def __init__(self, pairs, optimizers):
        super().__init__(pairs)
        self.optimizers = optimizers


class BackgroundWriter:
    """Writes weights files on a worker thread, from a snapshot.

    `write(model, values=...)` runs on the training thread: it waits for
    the previous write if that one is still running (raising its error, if
    it failed), captures what is to be written (the `values` given, one per
    `model.weights` entry, or a device copy taken here; the optimizer's
    variables likewise), and starts a thread that writes the file with
    `atomic_write` (temporary file, `fsync`, rename, directory `fsync`)
    from those copies while training goes on. `wait()` joins the last
    write and raises its error. Threads are not daemons: an interpreter
    that exits with a write pending finishes it first.

    Only the snapshot is read by the worker: every layer's and optimizer's
    `save_own_variables` is answered from it on the worker thread while
    the writer is open (`open(model)` ... `close()`), so the live weights
    may change meanwhile. A layer that stores values it computes (lookup
    tables) has those read live. The copies are reused: a write captures
    into the buffer that is not being written.

    Args:
        owner: Name of the callback, for messages.
        path: The `.weights.h5` path written.
        include_optimizer: Bool. Whether the file holds the optimizer's
            variables.
    """

    def __init__(self, owner, path, include_optimizer=True):
        self.owner = owner
        self.path = _checked(path)
        self.include_optimizer = include_optimizer
        self._thread = None
        self._error = None  # (exception, tag) of a failed write
        self._model = None
        self._patched = []
        self._weights = None
        self._optimizer_snapshot = None

    # -- lifetime ----------------------------------------------------------

    def open(self, model):
        """Claims `path` for this writer and hooks `model`'s walk."""
        self._claim()
        if self._model is model:
            return
        self._unpatch()
        self._model = model
        from keras_regularize._layer_walk import walk_layers

        objects = [model, *walk_layers(model), *_optimizers(model)]
        seen = set()
        for obj in objects:
            if id(obj) in seen or not hasattr(obj, "save_own_variables"):
                continue
            seen.add(id(obj))
            current = obj.__dict__.get("save_own_variables")
            if getattr(current, "_keras_regularize_snapshot", False):
                continue
            hook = _save_own_variables(obj, obj.save_own_variables)
            obj.__dict__["save_own_variables"] = hook
            self._patched.append(obj)

    def close(self):
        """Waits for the last write, unhooks and releases `path`.

        Raises the last write's error, if any (after releasing).
        """
        try:
            self.wait()
        finally:
            self._unpatch()
            self._model = None
            self._release()

    def finish(self, quiet=False):
        """`close()` if the writer is open; `quiet=True` drops any error.

        `quiet` is for a run already ending on another error, which must
        not be hidden by this one.
        """
        if not self.busy:
            return
        try:
            self.close()
        except BaseException:
            if not quiet:
                raise

    def _unpatch(self):
        for obj in self._patched:
            hook = obj.__dict__.get("save_own_variables")
            if getattr(hook, "_keras_regularize_snapshot", False):
                del obj.__dict__["save_own_variables"]
        self._patched = []

    def _claim(self):
        key = os.path.abspath(self.path)
        with _CLAIMS_LOCK:
            holder = _CLAIMS.get(key)
            holder = holder() if holder is not None else None
            if holder is not None and holder is not self and holder.busy:
                raise ValueError(
                    f"{self.owner} cannot write `checkpoint_path` "
                    f"{self.path!r}: {holder.owner} in a running `fit` "
                    "writes that file already. Give each callback its own "
                    "path."
                )
            _CLAIMS[key] = weakref.ref(self)

    def _release(self):
        key = os.path.abspath(self.path)
        with _CLAIMS_LOCK:
            holder = _CLAIMS.get(key)
            if holder is not None and holder() is self:
                del _CLAIMS[key]

    @property
    def busy(self):
        """Whether this writer is open (between `open` and `close`)."""
        return self._model is not None

    @property
    def pending(self):
        """Whether a write is still running."""
        return self._thread is not None and self._thread.is_alive()

    # -- writing -----------------------------------------------------------

    def wait(self):
        """Joins the running write; raises the error of a failed one.

        The error is raised once: an `OSError` as an `OSError` naming the
        path, anything else (a `KeyboardInterrupt` inside the write) as
        itself. Returns the tag of the failed write's `write` call, or
        `None`.
        """
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error[0]

    def poll(self):
        """Raises the error of a write that has finished, without waiting.

        A write still running is left alone; `wait` or the next `write`
        joins it.
        """
        thread = self._thread
        if thread is not None and not thread.is_alive():
            self.wait()

    def write(self, model, values=None, tag=None):
        """Captures now and writes `path` on a worker thread.

        Args:
            model: The model written (the one given to `open`).
            values: Optional list of copies, one per `model.weights`
                entry, to write instead of the current weights (they must
                not change until the next `write` returns).
            tag: Anything; the failed write's error carries it
                (`error.tag`).
        """
        self.wait()
        from keras_regularize.callbacks._weight_snapshot import WeightSnapshot

        weights = list(model.weights)
        if values is None:
            if self._weights is None:
                self._weights = WeightSnapshot()
            self._weights.capture(model)
            values = self._weights.values
        pairs = {id(v): value for v, value in zip(weights, values)}
        listed = {}
        if self.include_optimizer:
            chain = _optimizers(model)
            variables, index = [], set()
            for optimizer in chain:
                listed[id(optimizer)] = list(optimizer.variables)
                for v in listed[id(optimizer)]:
                    if id(v) not in index and id(v) not in pairs:
                        index.add(id(v))
                        variables.append(v)
            if variables:
                if self._optimizer_snapshot is None:
                    self._optimizer_snapshot = WeightSnapshot()
                self._optimizer_snapshot.capture(model, variables=variables)
                copies = self._optimizer_snapshot.values
                pairs.update(
                    (id(v), value) for v, value in zip(variables, copies)
                )
        snapshot = _Values(pairs, listed)
        thread = threading.Thread(
            target=self._run,
            args=(model, snapshot, tag),
            name=f"keras_regularize checkpoint {self.path}",
            daemon=False,
        )
        self._thread = thread
        thread.start()

    def _run(self, model, snapshot, tag):
        _LOCAL.values = snapshot
        try:
            atomic_save_weights(model, self.path, self.include_optimizer)
        except BaseException as error:  # raised on the training thread
            error.tag = tag
            self._error = (error, tag)
        finally:
            _LOCAL.values = None
