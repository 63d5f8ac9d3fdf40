"""Gradient clipping around any Keras optimizer, recording the gradient norm.

Papers: High-Performance Large-Scale Image Recognition Without Normalization
(https://arxiv.org/abs/2102.06171), for adaptive gradient clipping; AutoClip
(https://arxiv.org/abs/2007.14469), for percentile clipping.
"""

import math
import sys
import warnings

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._layer_walk import walk_layers
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize._variables import ScalarVariable
from keras_regularize.constraints._kernel_layout import TRANSPOSED_CONVS
from keras_regularize.constraints._kernel_layout import kernel_units
from keras_regularize.optimizers._wrapper import OptimizerWrapper
from keras_regularize.optimizers._wrapper import global_norm

DEFAULT_THRESHOLDS = {"global_norm": 1.0, "value": 1.0, "agc": 0.01}


def _check_threshold(method, threshold):
    if method not in DEFAULT_THRESHOLDS:
        if threshold is not None:
            fail(
                "threshold",
                f'None with method="{method}", which sets no threshold',
                threshold,
            )
        return None
    if threshold is None:
        return DEFAULT_THRESHOLDS[method]
    return check_number("threshold", threshold, low=0.0, low_open=True)


def _checked_threshold(optimizer, name, value):
    """The setter's check: `None` means "the default" only in `__init__`."""
    if optimizer.method in DEFAULT_THRESHOLDS:
        return check_number(name, value, low=0.0, low_open=True)
    return _check_threshold(optimizer.method, value)


def _whole(rank):
    return tuple(range(rank))


def default_unit_axes(variable):
    """AGC's reduced axes for a weight whose layer is not known.

    timm's rule (one unit per output unit; whole tensors for rank <= 1)
    read from the Keras variable name and rank: biases and scalars whole,
    `embeddings` per row, `depthwise_kernel` per (channel, multiplier),
    anything else per last-axis entry (the `Dense` and `Conv` layout).
    """
    rank = len(variable.shape)
    name = str(getattr(variable, "name", ""))
    if rank <= 1 or name.endswith("bias"):
        return _whole(rank)
    if name == "embeddings":
        return tuple(range(1, rank))
    if name == "depthwise_kernel":
        return tuple(range(rank - 2))
    return tuple(range(rank - 1))


def layer_unit_axes(model):
    """`{id(variable): reduced axes}` for the kernels of `model`'s layers.

    Units follow timm's `unitwise_norm`, which takes one unit per entry of
    a torch weight's first axis, mapped to Keras layouts: a `Dense`/`Conv`
    kernel per output unit (last axis), a depthwise kernel per (channel,
    multiplier) pair, an `Embedding` per row, an `EinsumDense` kernel per
    output unit of its equation. Transposed convolutions keep the last
    axis: torch stores them `(in, out, ...)`, so timm's unit is one input
    channel, which is Keras's last axis.
    """
    axes = {}
    for layer in walk_layers(model):
        slots = kernel_units(layer)
        if slots is None or not layer.built:
            continue
        for _, attr, reduce in slots:
            variable = getattr(layer, attr, None)
            if variable is None or not hasattr(variable, "shape"):
                continue
            rank = len(variable.shape)
            if reduce is None or isinstance(layer, TRANSPOSED_CONVS):
                reduce = tuple(range(rank - 1))
            axes[id(variable)] = tuple(reduce)
    return axes


def _find_owner(var_list, depth=12):
    """The layer or model in the calling frames that holds `var_list`.

    `fit` builds the optimizer with `model.trainable_variables` from a
    method of the model, and custom loops usually hold the model in a local
    variable; the optimizer is never told which model it trains otherwise.
    """
    wanted = {id(v) for v in var_list}
    if not wanted:
        return None
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        local = frame.f_locals
        candidates = [local.get("self")] + list(local.values())
        for candidate in candidates:
            if isinstance(candidate, keras.layers.Layer):
                held = {id(v) for v in candidate.trainable_variables}
                if wanted <= held:
                    return candidate
        frame = frame.f_back
    return None


def _unit_norms(x, axes):
    """L2 norms over `axes` (kept as size-1 dims); `|x|` when none."""
    x = ops.cast(x, "float32")
    if not axes:
        return ops.absolute(x)
    return ops.sqrt(ops.sum(ops.square(x), axis=axes, keepdims=True))


# One function per `method`, optax-style: each takes the wrapper (for its
# threshold and state), the gradients, their variables and their global norm
# before clipping, and returns the gradients to hand on and a bool tensor,
# whether it clipped anything this step.


def _scale(grads, scale):
    return [g * ops.cast(scale, g.dtype) for g in grads]


def _clip_global_norm(optimizer, grads, variables, norm):
    threshold = optimizer._threshold_tensor()
    # Keras's `global_clipnorm` arithmetic, so results match it exactly;
    # adding `norm - norm` turns the scale into NaN for non-finite norms.
    scale = threshold * ops.minimum(1.0 / norm, 1.0 / threshold)
    scale = scale + (norm - norm)
    return _scale(grads, scale), norm > threshold


def _clip_value(optimizer, grads, variables, norm):
    threshold = optimizer._threshold_tensor()
    peaks = [ops.max(ops.abs(ops.cast(g, "float32"))) for g in grads]
    fired = ops.max(ops.stack(peaks)) > threshold
    clipped = [
        ops.clip(g, ops.cast(-threshold, g.dtype), ops.cast(threshold, g.dtype))
        for g in grads
    ]
    return clipped, fired


def _clip_agc(optimizer, grads, variables, norm):
    factor = optimizer._threshold_tensor()
    clipped, flags = [], []
    for g, w in zip(grads, variables):
        if type(g).__name__ == "IndexedSlices":
            # TensorFlow's sparse Embedding gradient holds one slice per
            # lookup; a row's norm needs its repeats summed.
            g = ops.add(g, ops.zeros(tuple(w.shape), g.dtype))
        axes = optimizer._agc_axes.get(id(w))
        if axes is None:
            axes = default_unit_axes(w)
        g_norm = _unit_norms(g, axes)
        limit = factor * ops.maximum(_unit_norms(w, axes), optimizer.epsilon)
        over = g_norm > limit
        scale = ops.where(over, limit / ops.maximum(g_norm, 1e-6), 1.0)
        clipped.append(g * ops.cast(scale, g.dtype))
        flags.append(ops.any(over))
    return clipped, ops.any(ops.stack(flags))


def _clip_auto(optimizer, grads, variables, norm):
    threshold = optimizer._auto_threshold(norm)
    fired = norm > threshold
    scale = ops.where(fired, threshold / norm, 1.0) + (norm - norm)
    return _scale(grads, scale), fired


def _clip_none(optimizer, grads, variables, norm):
    return grads, ops.convert_to_tensor(False)


CLIPPERS = {
    "global_norm": _clip_global_norm,
    "value": _clip_value,
    "agc": _clip_agc,
    "auto": _clip_auto,
    "none": _clip_none,
}
METHODS = tuple(CLIPPERS)


@export("keras_regularize.optimizers.GradientClipping")
class GradientClipping(OptimizerWrapper):
    """Clips gradients, records their norm, then calls an optimizer.

    Every step, before clipping, the wrapper computes the global L2 norm of
    all gradients and records it in non-trainable variables: the latest value
    (`gradient_norm`), and since the last `reset_statistics()` their sum and
    maximum, the number of steps and how many of them clipped
    (`norm_statistics()` reads these as Python floats). The
    `keras_regularize.callbacks.GradientNormLogger` callback puts them into
    `logs` and `History`, so the typical norm can be read off before a
    threshold is chosen. Then it clips with one of these methods:

    - `"global_norm"`: rescales all gradients together so their global norm
      is at most `threshold`; the same arithmetic as Keras's
      `global_clipnorm`.
    - `"value"`: clips every element to `[-threshold, threshold]`, as
      Keras's `clipvalue`.
    - `"agc"`: adaptive gradient clipping. For every unit of a weight, the
      gradient norm is rescaled to at most
      `threshold * max(weight norm, epsilon)`. Units follow timm's
      `unitwise_norm` mapped to Keras layouts, chosen per layer: one
      output unit (last axis) of a `Dense` or `Conv` kernel, one (channel,
      multiplier) pair of a depthwise kernel, one row of an `Embedding`,
      one output unit of an `EinsumDense` equation (`MultiHeadAttention`
      projections), one last-axis entry of a transposed convolution (as
      timm, whose torch layout puts input channels first), and the whole
      tensor for biases and scales. `fit` finds the layers when it builds
      the optimizer; in a custom loop call `set_units_from(model)`.
    - `"auto"`: AutoClip. The global norm is clipped at the `percentile`-th
      percentile of the norms seen so far (this step's included), kept in a
      fixed buffer of the last `history_size` finite norms.
    - `"none"`: records the norms and clips nothing (monitor first).

    A step "clipped" when any gradient changed. Clipping acts on unscaled
    gradients: under `"mixed_float16"`, `compile()` wraps the wrapper in a
    `LossScaleOptimizer`, which unscales (and skips non-finite steps) first.
    With gradient accumulation (`gradient_accumulation_steps=k`, set on the
    inner optimizer or on the wrapper), clipping and the recorded norm act
    once per applied update, on the mean of the `k` accumulated gradients
    (as Keras's own `global_clipnorm` does). The wrapper otherwise
    behaves like `keras.optimizers.LossScaleOptimizer`: learning rate and
    `iterations` are the inner optimizer's, and it saves to `.keras` with
    its inner optimizer and recorded state. `threshold` is held in a
    non-trainable variable, so `optimizer.threshold = 2.0` from a callback
    takes effect in compiled steps.

    Args:
        optimizer: The `keras.optimizers.Optimizer` to wrap (or a name or
            config understood by `keras.optimizers.get`).
        method: One of `"global_norm"`, `"value"`, `"agc"`, `"auto"` and
            `"none"`. Defaults to `"global_norm"`.
        threshold: Float > 0: the maximum global norm (`"global_norm"`),
            absolute value (`"value"`) or ratio of gradient to weight norm
            (`"agc"`). Must be `None` for `"auto"` and `"none"`. Defaults to
            `None`, which means `1.0`, `1.0` and `0.01` respectively.
        percentile: Float in `(0, 100]`, the percentile of past norms used
            as the threshold by `"auto"`. Defaults to `10.0`.
        history_size: Int >= 1, the number of recent norms `"auto"` keeps.
            Defaults to `1000`.
        epsilon: Float > 0, the smallest weight norm `"agc"` uses, so units
            initialized at zero can still move. Defaults to `1e-3`.
        name: Optional name of the wrapper.

    Example:

    Wrap the optimizer given to `compile`; `callbacks.GradientNormLogger`
    logs the statistics it records:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> opt = keras_regularize.optimizers.GradientClipping(
    ...     keras.optimizers.Adam(1e-3), method="global_norm", threshold=1.0)
    >>> model.compile(optimizer=opt, loss="mse")
    >>> x, y = np.ones((32, 4)), np.full((32, 1), 10.0)
    >>> history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    >>> stats = opt.norm_statistics()
    >>> stats["steps"], stats["clip_rate"]  # every step's norm was over 1
    (4.0, 1.0)

    One step by hand shows what clipping does to the update:

    >>> opt = keras_regularize.optimizers.GradientClipping(
    ...     keras.optimizers.SGD(learning_rate=1.0), threshold=1.0)
    >>> w = keras.Variable([0.0, 0.0])
    >>> opt.apply([keras.ops.convert_to_tensor([3.0, 4.0])], [w])
    >>> opt.norm_statistics()["grad_norm"]  # recorded before clipping
    5.0
    >>> keras.ops.convert_to_numpy(w).round(3)  # a step of norm 1, not 5
    array([-0.6, -0.8], dtype=float32)

    References:
        - [Pascanu et al., 2013](https://arxiv.org/abs/1211.5063)
        - [Brock et al., 2021](https://arxiv.org/abs/2102.06171)
        - [Seetharaman et al., 2020](https://arxiv.org/abs/2007.14469)
    """

    def __init__(
        self,
        optimizer,
        method="global_norm",
        threshold=None,
        percentile=10.0,
        history_size=1000,
        epsilon=1e-3,
        name=None,
    ):
        method = check_choice("method", method, METHODS)
        threshold = _check_threshold(method, threshold)
        percentile = check_number(
            "percentile", percentile, 0.0, 100.0, low_open=True
        )
        history_size = check_int("history_size", history_size, low=1)
        epsilon = check_number("epsilon", epsilon, low=0.0, low_open=True)
        super().__init__(optimizer, name=name)
        self.method = method
        self.percentile = percentile
        self.history_size = history_size
        self.epsilon = epsilon
        self._agc_axes = {}
        self.threshold = threshold
        self.gradient_norm = self._add_state("gradient_norm")
        self.norm_sum = self._add_state("norm_sum")
        self.norm_max = self._add_state("norm_max")
        self.step_count = self._add_state("step_count", dtype="int32", value=0)
        self.clip_count = self._add_state("clip_count", dtype="int32", value=0)
        if method == "auto":
            self.norm_history = self._add_state(
                "norm_history", shape=(history_size,)
            )
            self.history_count = self._add_state(
                "history_count", dtype="int32", value=0
            )
            self.auto_threshold = self._add_state("auto_threshold")

    def build(self, var_list):
        super().build(var_list)
        if self.method == "agc" and not self._agc_axes:
            owner = _find_owner(var_list)
            if owner is not None:
                self._agc_axes = layer_unit_axes(owner)
            else:
                self._warn_unknown_layouts(var_list)

    def _warn_unknown_layouts(self, var_list):
        ambiguous = [
            v.path
            for v in var_list
            if len(v.shape) >= 3 and str(v.name) == "kernel"
        ]
        if ambiguous:
            warnings.warn(
                f"GradientClipping(method='agc') could not find the model "
                f"that owns the variables it was built with, so it takes "
                f"one unit per last-axis entry of {ambiguous} (the "
                f"Conv/Dense layout). For depthwise or EinsumDense kernels, "
                f"call `optimizer.set_units_from(model)` first.",
                stacklevel=3,
            )

    def set_units_from(self, model):
        """Takes AGC's unit of each weight from the layer that owns it.

        `fit` does this by itself when it builds the optimizer; call it
        in a custom training loop whose optimizer cannot see the model.

        Args:
            model: The `keras.Model` (or layer) whose weights are trained.
        """
        if not isinstance(model, keras.layers.Layer):
            fail("model", "a `keras.Model` or `keras.layers.Layer`", model)
        self._agc_axes = layer_unit_axes(model)

    threshold = ScalarVariable(
        _checked_threshold,
        "The clipping threshold as a Python float (`None` for auto/none).",
        unset=1.0,
        bind=True,
    )

    def reset_statistics(self):
        """Zeroes the norm sum and maximum and the step and clip counts."""
        for v in (self.norm_sum, self.norm_max, self.step_count):
            v.assign(ops.zeros((), v.dtype))
        self.clip_count.assign(ops.zeros((), "int32"))

    def norm_statistics(self):
        """The recorded statistics since the last reset, as Python floats.

        Returns:
            A dict with `"grad_norm"` (the latest step's norm),
            `"grad_norm_mean"`, `"grad_norm_max"`, `"clip_rate"` (the fraction
            of steps that clipped), `"steps"`, and for `"auto"`
            `"clip_threshold"` (the latest step's threshold). Means and rates
            are NaN before the first step.
        """

        def read(v):
            return float(ops.convert_to_numpy(v))

        steps = read(self.step_count)
        stats = {
            "grad_norm": read(self.gradient_norm),
            "grad_norm_mean": read(self.norm_sum) / steps
            if steps
            else math.nan,
            "grad_norm_max": read(self.norm_max) if steps else math.nan,
            "clip_rate": read(self.clip_count) / steps if steps else math.nan,
            "steps": steps,
        }
        if self.method == "auto":
            stats["clip_threshold"] = read(self.auto_threshold)
        return stats

    def _threshold_tensor(self):
        return ops.convert_to_tensor(self.threshold_variable, "float32")

    def _auto_threshold(self, norm):
        size = self.history_size
        finite = ops.isfinite(norm)
        count = ops.convert_to_tensor(self.history_count, "int32")
        slot = ops.arange(size, dtype="int32")
        write = ops.logical_and(finite, ops.equal(slot, count % size))
        history = ops.convert_to_tensor(self.norm_history)
        history = ops.where(write, norm, history)
        count = count + ops.cast(finite, "int32")
        self.norm_history.assign(history)
        self.history_count.assign(count)
        # Percentile with linear interpolation (NumPy's default) over the
        # `n` valid entries; unused slots sort last as +inf.
        n = ops.minimum(count, size)
        ordered = ops.sort(ops.where(slot < n, history, math.inf))
        position = ops.maximum(
            (self.percentile / 100.0) * ops.cast(n - 1, "float32"), 0.0
        )
        low = ops.cast(ops.floor(position), "int32")
        high = ops.minimum(low + 1, ops.maximum(n - 1, 0))
        below = ops.take(ordered, low)
        above = ops.take(ordered, high)
        fraction = position - ops.cast(low, "float32")
        value = below + fraction * (above - below)
        value = ops.where(ops.equal(fraction, 0.0), below, value)
        threshold = ops.where(n > 0, value, math.inf)
        self.auto_threshold.assign(threshold)
        return threshold

    def transform_gradients(self, grads, variables):
        norm = global_norm(grads)
        grads, fired = CLIPPERS[self.method](self, grads, variables, norm)
        self.gradient_norm.assign(norm)
        read = ops.convert_to_tensor
        self.norm_sum.assign(read(self.norm_sum) + norm)
        self.norm_max.assign(ops.maximum(read(self.norm_max), norm))
        self.step_count.assign(read(self.step_count) + 1)
        self.clip_count.assign(read(self.clip_count) + ops.cast(fired, "int32"))
        return grads

    def get_config(self):
        return {
            **super().get_config(),
            "method": self.method,
            "threshold": self.threshold,
            "percentile": self.percentile,
            "history_size": self.history_size,
            "epsilon": self.epsilon,
        }
