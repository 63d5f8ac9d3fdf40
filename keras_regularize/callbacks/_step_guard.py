"""A wrapper around `model.train_function` that reports a failing step.

Keras calls no callback hook when a train step raises, so a callback that
must act then (restore weights) wraps the step for the length of its `fit`.
Several guards may wrap one step (one per callback); each unlinks itself
wherever it is in the chain.
"""

# Attribute of a guarded step naming its guard.
GUARD = "_early_stopping_restore_guard"


def _ends_epoch(error):
    # Exceptions Keras itself uses to end an epoch of unknown length; they
    # leave the train step normally and must not count as a failure.
    return isinstance(error, StopIteration) or (
        type(error).__name__ == "OutOfRangeError"
    )


class StepGuard:
    """Calls `on_error()` when a step of the guarded `fit` raises.

    `install(model)` at the start of `fit`, `arm()` before each of its
    steps (from `on_train_batch_begin`), `remove()` at its end; or use the
    installed guard as a context manager, `with guard.install(model): ...`.
    Only armed steps of that `fit` are watched: a step of another `fit` or
    a `train_on_batch` passes straight through, and a guard whose `fit` is
    over (left by an exception that skipped `remove`) removes itself.

    Args:
        on_error: Called with no arguments before the step's exception
            (or `KeyboardInterrupt`) propagates.
    """

    def __init__(self, on_error):
        self.on_error = on_error
        self.active = False
        self.armed = False
        self.inner = None
        self._model = None
        self._token = None

    def live_in(self, model):
        """Whether the guarded `fit` is the one now running on `model`."""
        # `fit` gives the model a new `History` before any callback starts:
        # it tells this fit from a later one.
        return self.active and getattr(model, "history", None) is self._token

    def install(self, model):
        """Wraps `model.train_function` for the `fit` that starts now."""
        self._model = model
        self._token = getattr(model, "history", None)
        self.armed = False
        self.active = False
        # Drop guards of fits no longer running: an exception outside the
        # step skips their `remove`.
        link = getattr(getattr(model, "train_function", None), GUARD, None)
        while link is not None:
            if link is self or not link.live_in(model):
                link.remove()
                link = getattr(model.train_function, GUARD, None)
            else:
                link = getattr(link.inner, GUARD, None)
        step = getattr(model, "train_function", None)
        if step is not None:
            self.inner = step

            def guarded(*args, **kwargs):
                return self._call(*args, **kwargs)

            setattr(guarded, GUARD, self)
            model.train_function = guarded
        self.active = True
        return self

    def arm(self):
        """Marks the next step as one of the guarded `fit`."""
        self.armed = True

    def remove(self):
        """Unlinks this guard, wherever it is in the chain."""
        self.active = False
        model = self._model
        step = getattr(model, "train_function", None)
        link = getattr(step, GUARD, None)
        if link is self:
            model.train_function = self.inner
            return
        while link is not None:
            inner = getattr(link.inner, GUARD, None)
            if inner is self:
                link.inner = self.inner
                return
            link = inner

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.remove()
        return False

    def _call(self, *args, **kwargs):
        if not (self.armed and self.live_in(self._model)):
            if not self.live_in(self._model):
                self.remove()
            return self.inner(*args, **kwargs)
        self.armed = False
        try:
            return self.inner(*args, **kwargs)
        except BaseException as error:
            if not _ends_epoch(error):
                self.on_error()
            raise
