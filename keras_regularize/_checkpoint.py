"""Weights files written atomically: a reader finds a complete file or none."""

import contextlib
import os
import uuid

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


def temporary_path(path):
    """A name beside `path`, unique to this process and this write.

    Two writers (callbacks, threads, processes) of one `path` never share
    a temporary file, and the last `os.replace` wins.
    """
    stem = _checked(path)[: -len(SUFFIX)]
    return f"{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex}{SUFFIX}"


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
    temporary = temporary_path(path)
    extra = {}
    optimizer = getattr(model, "optimizer", None)
    if not include_optimizer and optimizer is not None:
        extra["objects_to_skip"] = [optimizer]
    try:
        keras.saving.save_weights(model, temporary, **extra)
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
            f"Could not write weights to {path!r}; a file already there is "
            f"unchanged. Cause: {error}"
        ) from error
