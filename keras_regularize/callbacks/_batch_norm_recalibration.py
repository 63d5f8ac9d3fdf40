"""Batch-norm statistics recomputed for a model's current weights.

Averaged weights (stochastic weight averaging) come with no statistics of
their own: the averaged moving means and variances of the raw models are
not those of the averaged model's activations. `BatchNormRecalibration`
recomputes them with one pass over some data, the way torch's
`swa_utils.update_bn` does with `momentum=None`.

What the pass computes, exactly:

- Every trainable `keras.layers.BatchNormalization` found by `walk_layers`
  takes part. A frozen one (`trainable=False`) runs in inference mode in
  Keras even during training, so its statistics never follow the weights;
  it is left as it is and normalizes with its own moving statistics.
- The data goes through the model once, batched as `model.predict` batches
  it, in inference mode (dropout and every other random layer off), except
  that each batch-norm layer normalizes with the statistics of its batch, as
  in training. This is the forward that torch's `update_bn` runs (the
  module in training mode, with dropout and batch norm both in it; here
  dropout stays off).
- Each layer accumulates, over every sample of every batch (and every call,
  for a layer called more than once), the mean and the squared deviations
  of its inputs per channel (float32 on the device, combined in float64 on
  the host). Its new moving mean and moving variance are the mean and the
  biased variance of all the inputs it received in that pass: every element
  counts once, whatever the batch it came in (torch averages the per-batch
  means and unbiased variances with one weight per batch instead).
  Masked elements, where the layer receives a mask, do not count.

What "inputs" means for a layer after another batch-norm layer: the inputs
it receives in that pass, where the earlier layer normalized each batch by
that batch's statistics. For the first batch-norm layer of a path (none
before it), they are exactly its inputs at inference under the current
weights. For a later one they are its inputs at inference with the earlier
layer's recalibrated statistics when the data comes in one batch, and
differ from them by the batch-to-batch spread of the earlier layer's
statistics otherwise (smaller with larger batches). Getting the inference
inputs exactly in general needs one pass per batch-norm depth; this is one
pass, as `update_bn` and the SWA paper do.

The cost is that of one `model.predict` over the data plus a mean and a
sum of squares per batch-norm input; only per-batch per-channel sums come
back to the host.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_regularize._layer_walk import walk_layers


def batch_norm_layers(model):
    """The trainable `BatchNormalization` layers of `model`, each once."""
    return [
        layer
        for layer in walk_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
        and layer.trainable
    ]


def _channel_axis(layer, rank):
    axis = layer.axis
    return axis + rank if axis < 0 else axis


def _moments(inputs, mask, axes):
    """`(count, mean, sum of squared deviations)` over `axes`, float32."""
    if mask is None:
        count = 1.0
        for axis in axes:
            count = count * ops.cast(ops.shape(inputs)[axis], "float32")
        mean = ops.mean(inputs, axis=axes)
        shape = [1] * len(inputs.shape)
        channels = [i for i in range(len(inputs.shape)) if i not in axes]
        for i in channels:
            shape[i] = -1
        deviation = inputs - ops.reshape(mean, shape)
        m2 = ops.sum(ops.square(deviation), axis=axes)
        return ops.reshape(count, (1,)), mean, m2
    weights = ops.cast(ops.expand_dims(mask, axis=-1), "float32")
    weights = ops.broadcast_to(weights, ops.shape(inputs))
    count = ops.sum(weights, axis=axes)
    total = ops.maximum(count, 1.0)
    mean = ops.sum(inputs * weights, axis=axes) / total
    shape = [1] * len(inputs.shape)
    shape[-1] = -1
    deviation = (inputs - ops.reshape(mean, shape)) * weights
    m2 = ops.sum(ops.square(deviation), axis=axes)
    # One count per call: a masked layer's count is the same per channel.
    return ops.reshape(count[..., :1], (1,)), mean, m2


class _Recorder:
    """Collects the moments the patched layers report during one call.

    A plain object: Keras would wrap a list held by a layer attribute.
    """

    def __init__(self):
        self.sink = None
        # Which layer each recorded call belongs to, in call order.
        self.call_layers = []

    def record(self, index, count, mean, m2):
        if self.sink is not None:
            self.sink.append((index, count, mean, m2))


class _Statistics(keras.Model):
    """Runs `model` once and returns its batch-norm layers' batch moments.

    Shares every variable with `model` (it holds it as an attribute), so
    its predict function, compiled once, reads the current weights.
    """

    def __init__(self, model, recorder):
        super().__init__(name="batch_norm_statistics")
        self.source = model
        self.recorder = recorder
        self.built = True

    def call(self, inputs):
        sink = []
        self.recorder.sink = sink
        try:
            self.source(inputs, training=False)
        finally:
            self.recorder.sink = None
        if not sink:
            raise ValueError(
                "None of the model's trainable BatchNormalization layers "
                "was called by its forward pass, so their statistics cannot "
                "be recalibrated from it."
            )
        self.recorder.call_layers = [index for index, _, _, _ in sink]
        return {
            "count": ops.expand_dims(
                ops.concatenate([c for _, c, _, _ in sink]), 0
            ),
            "mean": ops.expand_dims(
                ops.concatenate([m for _, _, m, _ in sink]), 0
            ),
            "m2": ops.expand_dims(
                ops.concatenate([s for _, _, _, s in sink]), 0
            ),
        }


def _batch_statistics_call(layer, index, recorder):
    """A `call` for `layer` normalizing by its batch, reporting moments."""

    def call(inputs, training=None, mask=None):
        x = ops.cast(inputs, "float32")
        rank = len(x.shape)
        channel = _channel_axis(layer, rank)
        axes = [i for i in range(rank) if i != channel]
        count, mean, m2 = _moments(x, mask, axes)
        recorder.record(index, count, mean, m2)
        variance = m2 / ops.maximum(count, 1.0)
        gamma = ops.cast(layer.gamma, "float32") if layer.scale else None
        beta = ops.cast(layer.beta, "float32") if layer.center else None
        outputs = ops.batch_normalization(
            x,
            mean,
            variance,
            axis=channel,
            offset=beta,
            scale=gamma,
            epsilon=layer.epsilon,
        )
        return ops.cast(outputs, layer.compute_dtype)

    return call


class BatchNormRecalibration:
    """Recomputes the batch-norm statistics of `model` from data.

    Build it once per model; each `run(data)` is one pass, compiled once
    (the model's `jit_compile` and `run_eagerly` settings are used).

    Args:
        model: A built `keras.Model`.
        layers: Optional list of the `BatchNormalization` layers to
            recalibrate; defaults to `batch_norm_layers(model)`.
    """

    def __init__(self, model, layers=None):
        self.model = model
        self.layers = batch_norm_layers(model) if layers is None else layers
        self._statistics = None
        self._recorder = _Recorder()

    def _statistics_model(self):
        if self._statistics is None:
            statistics = _Statistics(self.model, self._recorder)
            statistics.jit_compile = bool(
                getattr(self.model, "jit_compile", False)
            )
            statistics.run_eagerly = bool(
                getattr(self.model, "run_eagerly", False)
            )
            self._statistics = statistics
        return self._statistics

    @contextlib.contextmanager
    def _patched(self):
        for index, layer in enumerate(self.layers):
            layer.call = _batch_statistics_call(layer, index, self._recorder)
        try:
            yield
        finally:
            for layer in self.layers:
                if "call" in vars(layer):
                    del layer.call

    def statistics(self, data, batch_size=None, steps=None):
        """`[(mean, variance), ...]` per layer from one pass (float64).

        `data` is anything `model.predict` accepts, as are `batch_size` and
        `steps`. A layer that saw no input gets `None`.
        """
        model = self._statistics_model()
        with self._patched():
            out = model.predict(
                data, batch_size=batch_size, steps=steps, verbose=0
            )
        counts = np.asarray(out["count"], "float64")
        means = np.asarray(out["mean"], "float64")
        m2s = np.asarray(out["m2"], "float64")
        per_layer = [[] for _ in self.layers]
        offset = 0
        for call, index in enumerate(self._recorder.call_layers):
            width = int(self.layers[index].moving_mean.shape[0])
            columns = slice(offset, offset + width)
            per_layer[index].append(
                (counts[:, call], means[:, columns], m2s[:, columns])
            )
            offset += width
        return [_combine(calls) for calls in per_layer]

    def run(self, data, batch_size=None, steps=None):
        """Assigns the recomputed statistics to the layers' moving ones.

        Returns the list of `(mean, variance)` assigned (float64 arrays;
        `None` for a layer the data never reached, which is left as it
        is).
        """
        results = self.statistics(data, batch_size=batch_size, steps=steps)
        for layer, result in zip(self.layers, results):
            if result is None:
                continue
            mean, variance = result
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(
                variance.astype(layer.moving_variance.dtype)
            )
        return results


def _combine(calls):
    """Pooled mean and biased variance of per-batch moments (Chan et al.)."""
    if not calls:
        return None
    counts = np.concatenate([c for c, _, _ in calls])
    means = np.concatenate([m for _, m, _ in calls])
    m2s = np.concatenate([s for _, _, s in calls])
    total = counts.sum()
    if total <= 0:
        return None
    mean = (counts[:, None] * means).sum(axis=0) / total
    m2 = m2s.sum(axis=0) + (counts[:, None] * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / total
