"""A double-buffered copy of a model's weights, kept where the weights live.

`capture` writes into the spare buffer and only then makes it the current
one, in a single assignment: an exception or `KeyboardInterrupt` in the
middle of a copy leaves the previous capture whole and restorable. How the
copies are kept depends on the backend and device
(`_backend.weight_snapshot_kind`):

- `"variable"` (TensorFlow, torch): non-trainable `keras.Variable`s,
  assigned into at each capture, so the buffers are reused;
- `"host"` (JAX on CPU, where the host is the device): NumPy arrays filled
  with `np.copyto` (XLA's CPU copy is several times slower than NumPy's,
  and reuse avoids page faults);
- `"copy"` (JAX on an accelerator): arrays are immutable but the next
  train step donates (deletes) the live ones, so each capture takes new
  device copies (`keras.ops.copy`) and drops the older ones.
"""

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend


def _is_sharded(variable):
    """Whether `variable`'s value is split over devices (not replicated)."""
    sharding = getattr(variable.value, "sharding", None)
    return sharding is not None and not getattr(
        sharding, "is_fully_replicated", True
    )


class WeightSnapshot:
    """The last complete copy of a model's weights, with an optional tag.

    Used by `EarlyStoppingRestore` for the best weights; weight averaging
    keeps its copies the same way. The variables are fixed at the first
    `capture`; later captures and restores must be of the same model.

    Args:
        kind: Optional `"variable"`, `"host"` or `"copy"`; by default the
            backend's answer at the first capture.
    """

    def __init__(self, kind=None):
        self.kind = kind
        self._model = None
        self._variables = None
        self._buffers = [None, None]
        # Whether a buffer may be written into again: JAX may alias a NumPy
        # array it was given by `assign`, so a restored one is never reused.
        self._owned = [False, False]
        # `(index of the current buffer, tag)`, set in one assignment.
        self._current = None

    @property
    def captured(self):
        """Whether a complete capture exists."""
        return self._current is not None

    @property
    def tag(self):
        """The `tag` given with the current capture (`None` if none)."""
        return None if self._current is None else self._current[1]

    @property
    def values(self):
        """The current copies, one per variable (`None` before a capture)."""
        if self._current is None:
            return None
        return self._buffers[self._current[0]]

    def capture(self, model, tag=None, variables=None):
        """Copies `model.weights` into the spare buffer, then flips to it.

        `variables` (a list of variables of `model`, e.g. its optimizer's)
        replaces `model.weights`; a different list than at the last capture
        starts new buffers.
        """
        if variables is not None and self._variables is not None:
            if [id(v) for v in variables] != [id(v) for v in self._variables]:
                self._variables = None
                self._buffers, self._owned = [None, None], [False, False]
                self._current = None
        if self._variables is None:
            self._model = model
            self._variables = list(
                model.weights if variables is None else variables
            )
            if self.kind is None:
                self.kind = _backend.weight_snapshot_kind()
                if self.kind == "host" and any(
                    _is_sharded(v) for v in self._variables
                ):
                    # A sharded (ModelParallel) model: device copies keep
                    # each variable's sharding; host copies would not.
                    self.kind = "copy"
        self._check_model(model)
        spare = 0 if self._current is None else 1 - self._current[0]
        buffer = self._buffers[spare] if self._owned[spare] else None
        buffer = self._copy(buffer)
        self._buffers[spare], self._owned[spare] = buffer, True
        self._current = (spare, tag)  # the flip: one store
        if self.kind == "copy":
            # Immutable arrays cannot be reused: free the older copies.
            self._buffers[1 - spare] = None
            self._owned[1 - spare] = False

    def restore(self, model):
        """Assigns the current copies to `model`'s variables.

        Returns `True` if weights were assigned, `False` when nothing has
        been captured yet (the model is left as it is).
        """
        if self._current is None:
            return False
        self._check_model(model)
        index = self._current[0]
        for variable, value in zip(self._variables, self._buffers[index]):
            if self.kind == "copy":
                # `assign` stores the array itself, and the next `fit`
                # donates it: hand over a copy and keep ours.
                value = ops.copy(value)
            elif self.kind == "variable":
                value = value.value
            variable.assign(value)
        if self.kind == "host":
            self._owned[index] = False
        return True

    def load(self, model, arrays, tag=None):
        """Makes `arrays` (one per `model.weights` entry) the current copy.

        For a capture saved elsewhere (a `BackupAndRestore` sidecar file):
        afterwards `restore` assigns these values.
        """
        if self._variables is None:
            self._model = model
            self._variables = list(model.weights)
            if self.kind is None:
                self.kind = _backend.weight_snapshot_kind()
        self._check_model(model)
        if len(arrays) != len(self._variables):
            raise ValueError(
                f"Expected {len(self._variables)} arrays (one per weight of "
                f"the model). Received: {len(arrays)} arrays"
            )
        spare = 0 if self._current is None else 1 - self._current[0]
        buffer = []
        for v, array in zip(self._variables, arrays):
            array = np.asarray(array)
            if tuple(array.shape) != tuple(v.shape):
                raise ValueError(
                    f"Expected an array of shape {tuple(v.shape)} for "
                    f"{v.path}. Received: shape {tuple(array.shape)}"
                )
            if self.kind == "host":
                buffer.append(np.array(array, dtype=array.dtype))
            elif self.kind == "copy":
                buffer.append(ops.convert_to_tensor(array, dtype=v.dtype))
            else:
                buffer.append(
                    keras.Variable(
                        array, dtype=v.dtype, trainable=False, name="snapshot"
                    )
                )
        self._buffers[spare], self._owned[spare] = buffer, True
        self._current = (spare, tag)
        if self.kind == "copy":
            self._buffers[1 - spare] = None
            self._owned[1 - spare] = False

    def _check_model(self, model):
        if model is not self._model:
            raise ValueError(
                "This WeightSnapshot holds the weights of another model. "
                f"Received: model={model!r}"
            )

    def _copy(self, buffer):
        """Fills `buffer` (or new copies, if `None`) from the variables."""
        variables = self._variables
        if self.kind == "copy":
            return [ops.copy(ops.stop_gradient(v.value)) for v in variables]
        if self.kind == "host":
            if buffer is None:
                return [np.array(v.value) for v in variables]
            for array, v in zip(buffer, variables):
                np.copyto(array, np.asarray(v.value))
            return buffer
        if buffer is None:
            return [
                keras.Variable(
                    ops.copy(ops.stop_gradient(v.value)),
                    dtype=v.dtype,
                    trainable=False,
                    name=f"snapshot_{i}",
                )
                for i, v in enumerate(variables)
            ]
        for copy, v in zip(buffer, variables):
            copy.assign(v.value)
        return buffer
