"""A residual wrapper whose dropped blocks are not computed at all.

Papers: Deep Networks with Stochastic Depth (https://arxiv.org/abs/1603.09382);
the per-sample subset form follows DINOv2's training code
(https://arxiv.org/abs/2304.07193).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_regularize import _backend
from keras_regularize._export import export
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import fail
from keras_regularize.layers._rate import BranchDropLayer
from keras_regularize.layers._seeded import draw_seed
from keras_regularize.layers.drop_path import drop_branch

MODES = ("batch", "subset", "row")


@export("keras_regularize.layers.StochasticResidual")
class StochasticResidual(BranchDropLayer):
    """Wraps a block as `x + block(x)`, skipping the block at random.

    The block may be any layer or model whose output shape equals its input
    shape. In training:

    - `mode="batch"`: with probability `rate` the block is skipped for the
      whole batch and the layer returns `x`. A skipped block is **not
      computed**: neither its forward nor its backward pass runs, on every
      backend and inside jit-compiled steps (the choice is a `keras.ops.cond`
      on a seeded draw). Kept blocks are scaled by `1 / (1 - rate)`. The
      decision is one for the global batch: every replica of a
      data-parallel step takes the same one. On torch, whose steps run
      eagerly, it is drawn on the host (no device value is read inside the
      step) from a counter-based stream `(seed, draws)`, advanced once per
      call; the stream is saved with the layer (the non-trainable
      `host_stream` variable, written when the layer is saved and read back
      when it is loaded), so a resumed run continues it.
      The losses the block adds while it runs (activity regularizers,
      `add_loss`) count in the steps where it is kept, and a skipped block
      adds none, since its activations never exist. Weight regularizers
      depend on the weights only and count in every step, as elsewhere.
    - `mode="subset"`: the block runs on a random subset of
      `max(1, floor(B * (1 - rate)))` samples (none of an empty batch), a
      static size wherever the batch size is static (each replica of a
      data-parallel step draws its own subset), and its output is
      added back to those samples scaled by `B / subset`; the other samples
      pass through unchanged. The subset size is computed from `rate`
      when the step is traced, so a rate changed later applies once the step
      is traced again (the other modes read the rate variable every step).
    - `mode="row"`: the block runs on every sample and its output is dropped
      per sample as by `DropPath` (no compute saved; for comparison).

    An empty batch passes through unchanged in every mode.

    At inference the layer returns `x + block(x)`, or
    `x + (1 - rate) * block(x)` when `scale_by_keep=False` (then no scaling
    is applied in training either).

    Args:
        block: A `keras.layers.Layer` or `keras.Model` mapping a tensor to one
            of the same shape.
        rate: Float in `[0, 1)`. Probability of skipping the block.
            Defaults to `0.1`.
        mode: `"batch"`, `"subset"` or `"row"`. Defaults to `"batch"`.
        scale_by_keep: Python bool. Defaults to `True`.
        seed: Optional non-negative int for the layer's seed generator.
            Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Floating-point tensor accepted by `block`, batch first.
            Integer inputs are refused (the scaled residual would be
            truncated); cast them first.
        training: Python bool. The block is skipped only when `True`.

    Example:

    >>> block = keras.layers.Dense(4, kernel_initializer="ones")
    >>> layer = keras_regularize.layers.StochasticResidual(
    ...     block, rate=0.2, seed=0)
    >>> x = np.ones((2, 4), "float32")
    >>> tuple(layer(x, training=True).shape)  # the block ran, or was skipped
    (2, 4)
    >>> keras.ops.convert_to_numpy(layer(x))  # inference: x + block(x)
    array([[5., 5., 5., 5.],
           [5., 5., 5., 5.]], dtype=float32)

    References:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
        - [Oquab et al., 2023](https://arxiv.org/abs/2304.07193)
    """

    MODES = MODES

    def __init__(
        self,
        block,
        rate=0.1,
        mode="batch",
        scale_by_keep=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(rate, mode, scale_by_keep, seed, **kwargs)
        if not isinstance(block, keras.layers.Layer):
            fail("block", "a keras.layers.Layer or keras.Model", block)
        self.block = block
        if self.mode == "batch":
            # The host stream `(seed, draws)` of torch's keep/skip
            # decisions, seeded like the seed generator (read once, here,
            # outside any step). Saved in `host_stream`.
            seed = int(ops.convert_to_numpy(self.seed_generator.state)[0])
            self._host = [seed, 0]
            self.host_stream = self.add_weight(
                name="host_stream",
                shape=(2,),
                dtype="int32",
                initializer=keras.initializers.Constant(self._host),
                trainable=False,
            )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if not self.block.built:
            self.block.build(input_shape)
        spec = self.block.compute_output_spec(
            keras.KerasTensor(input_shape, dtype=self.compute_dtype)
        )
        out_shape = tuple(getattr(spec, "shape", ()))
        if len(out_shape) != len(input_shape) or any(
            a is not None and b is not None and a != b
            for a, b in zip(out_shape, input_shape)
        ):
            fail(
                "block",
                "a block whose output shape equals its input shape, not one "
                f"mapping {input_shape} to {out_shape}",
                self.block.name,
            )
        self.built = True

    def _block(self, inputs, training):
        """The block's output in the input's dtype (blocks may differ)."""
        return ops.cast(self.block(inputs, training=training), inputs.dtype)

    def call(self, inputs, training=False):
        # `x + scale * block(x)` in the input's dtype: integer inputs would
        # truncate the scale (and the block's float output).
        check_input_dtype("StochasticResidual", inputs)
        if not training:
            out = self._block(inputs, False)
            if not self.scale_by_keep:
                out = out * ops.cast(self._keep_prob(), out.dtype)
            return inputs + out
        if self.mode == "row":
            return inputs + drop_branch(
                self._block(inputs, True),
                self._keep_prob(),
                "row",
                self.scale_by_keep,
                self,
            )
        if self.mode == "subset":
            return self._call_subset(inputs)
        return self._call_batch(inputs)

    def _call_batch(self, inputs):
        keep_prob = self._keep_prob()
        if _backend.steps_run_eagerly():
            return self._call_batch_eager(inputs, self._host_keep(), keep_prob)
        # One decision for the global batch: the same seed on every replica.
        seed = draw_seed(self, per_replica=False)
        u = keras.random.uniform((), dtype="float32", seed=seed)
        keep = u < keep_prob
        trainable = self.block.trainable_variables
        stateful = self.block.non_trainable_variables
        # Current values, read outside the cond (tracers under JAX jit).
        weights = [v.value for v in trainable]
        state = [v.value for v in stateful]

        # Whether the traced block added losses (activity regularizers,
        # `add_loss`): set while a branch is traced.
        traced_losses = []

        def run_block():
            # The block runs in its own stateless scope: its state updates
            # (batch-norm statistics, seed generators) and its losses come
            # back as values instead of being written from inside the branch,
            # so both branches are pure and the cond compiles on every
            # backend.
            mapping = list(zip(trainable, weights)) + list(zip(stateful, state))
            with keras.StatelessScope(
                state_mapping=mapping, collect_losses=True
            ) as scope:
                out = self._block(inputs, True)
            new_state = []
            for variable, value in zip(stateful, state):
                current = scope.get_current_value(variable)
                new_state.append(value if current is None else current)
            traced_losses.append(bool(scope.losses))
            loss = ops.zeros((), "float32")
            for value in scope.losses:
                loss = loss + ops.cast(value, "float32")
            return inputs + self._scale(out, keep_prob), new_state, loss

        def skip_block():
            # A skipped block adds no loss: its activations were never
            # computed (the same as on torch, where it does not run at all).
            return inputs, state, ops.zeros((), "float32")

        outputs, new_state, loss = ops.cond(keep, run_block, skip_block)
        for variable, value in zip(stateful, new_state):
            variable.assign(value)
        if any(traced_losses):
            self.add_loss(loss)
        return outputs

    def _call_batch_eager(self, inputs, keep, keep_prob):
        # Torch runs eagerly (a compiled torch step breaks its graph at this
        # branch), so only the taken branch executes and the block may
        # update its state directly. `keep` is a host bool: no device read.
        if keep:
            return inputs + self._scale(self._block(inputs, True), keep_prob)
        # Unused weights would get `None` gradients, which Keras warns about
        # and skips; a zero-weighted sum gives the zero gradients that the
        # compiled backends produce, at the cost of one pass over the weights.
        weights = self.block.trainable_weights
        if not weights:
            return inputs
        zero = sum(ops.sum(ops.cast(w, "float32")) for w in weights) * 0.0
        return inputs + ops.cast(zero, inputs.dtype)

    def _host_keep(self):
        """The next keep/skip decision of the host stream (a Python bool).

        Draw `n` of seed `s` is the first uniform of NumPy's generator
        seeded with `[s, n]`: reproducible for a seed, the same on every
        DDP rank, and computed without touching the device. The rate is
        the host mirror of the rate variable.
        """
        seed, draws = self._host
        self._host[1] = draws + 1
        u = np.random.default_rng([seed, draws]).random()
        return bool(u < 1.0 - self.rate)

    def save_own_variables(self, store):
        if self.mode == "batch":
            self.host_stream.assign(np.array(self._host, "int32"))
        super().save_own_variables(store)

    def load_own_variables(self, store):
        if self.mode == "batch" and "1" not in store:
            # A file saved before the host stream existed: the rate only.
            self.rate_variable.assign(store["0"])
            return
        super().load_own_variables(store)
        if self.mode == "batch":
            stream = ops.convert_to_numpy(self.host_stream)
            self._host = [int(v) for v in stream]

    def _scale(self, out, keep_prob):
        if self.scale_by_keep:
            return out / ops.cast(keep_prob, out.dtype)
        return out

    def _call_subset(self, inputs):
        batch = ops.shape(inputs)[0]
        keep_prob = 1.0 - self.rate
        if isinstance(batch, int):
            if batch == 0:
                return inputs  # empty in, empty out (top_k needs k <= B)
            size = max(1, int(math.floor(batch * keep_prob + 1e-6)))
            scale = batch / size
        else:
            batch_f = ops.cast(batch, "float32")
            size = ops.maximum(
                ops.cast(ops.floor(batch_f * keep_prob + 1e-6), "int32"), 1
            )
            # At most the batch: 0 for an empty batch, whose subset is empty.
            size = ops.minimum(size, ops.cast(batch, "int32"))
            scale = batch_f / ops.cast(ops.maximum(size, 1), "float32")
        u = keras.random.uniform(
            (batch,), dtype="float32", seed=draw_seed(self)
        )
        _, index = ops.top_k(u, size, sorted=False)
        subset = ops.take(inputs, index, axis=0)
        out = self._block(subset, True)
        if self.scale_by_keep:
            out = out * ops.cast(scale, out.dtype)
        updated = subset + out
        return ops.scatter_update(inputs, ops.expand_dims(index, -1), updated)

    def get_config(self):
        return {
            **super().get_config(),
            "block": keras.saving.serialize_keras_object(self.block),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["block"] = keras.saving.deserialize_keras_object(config["block"])
        return cls(**config)
