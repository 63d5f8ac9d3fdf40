"""What every random layer of the package shares, written once."""

import keras
from keras import ops

from keras_regularize import _backend
from keras_regularize._validation import check_input_dtype
from keras_regularize._validation import check_seed


def add_seed_generator(owner, seed):
    """Checks `seed`, then gives `owner` its `seed` and `seed_generator`.

    Every random draw of the package goes through the generator created
    here. Call it where the constructor created the generator before, so
    the variable order of saved files stays the same.
    """
    owner.seed = check_seed("seed", seed)
    owner.seed_generator = keras.random.SeedGenerator(owner.seed)


# Added to a drawn seed's first word once per replica index. Odd and below
# 2**31, so it fits every backend's seed dtype (torch int32 wraps).
REPLICA_STRIDE = 0x2545F491


def draw_seed(owner, per_replica=True):
    """The `seed=` argument of one `keras.random` draw of `owner`.

    `owner` has a `seed_generator`. With `per_replica=True` (per-sample and
    per-element draws), replica `r` of a data-parallel step draws from the
    seed `owner.seed_generator` gives, with `r * REPLICA_STRIDE` added to
    its first word: every replica advances the same generator state, and
    draws its own values. Replica 0, and any single device, draws exactly
    the generator's own stream. With `per_replica=False` (one decision for
    the global batch, such as `mode="batch"`), every replica draws the same
    value: the generator itself is returned.

    The replica index is `_backend.replica_id()`: a traced tensor under a
    `tf.distribute` strategy (so it works inside `tf.function` and XLA),
    the process rank under torch DDP, and 0 under JAX, where
    `keras.distribution` draws once over the global batch.
    """
    generator = owner.seed_generator
    if not per_replica:
        return generator
    replica = _backend.replica_id()
    if isinstance(replica, int) and replica == 0:
        return generator
    return ReplicaSeed(generator, replica)


class ReplicaSeed(keras.random.SeedGenerator):
    """A replica's view of a `SeedGenerator`: its seeds, offset by replica.

    `keras.random` accepts an int or a `SeedGenerator` as `seed` (a tensor
    only on JAX), and asks a generator for its next seed. This view hands
    out the wrapped generator's next seed with the replica's offset added;
    it owns no variable of its own (the base constructor is not called).
    """

    def __init__(self, generator, replica):
        self.name = generator.name
        self.backend = generator.backend
        self.state = generator.state
        # Not None: torch's `dropout` would otherwise take its unseeded
        # path (the global torch RNG) and ignore this view's seeds.
        self._initial_seed = 0
        self._generator = generator
        self._replica = replica

    def next(self, ordered=True):
        seed = self._generator.next(ordered)
        offset = ops.cast(self._replica, seed.dtype) * REPLICA_STRIDE
        return seed + ops.convert_to_tensor([1, 0], seed.dtype) * offset

    def get_config(self):
        return self._generator.get_config()


class Seeded:
    """Mixin for layers that draw random numbers and keep their input shape.

    Put it before the Keras base class (`class X(Seeded, keras.layers.Layer)`)
    and list the constructor arguments that `get_config` returns in
    `CONFIG`. It provides:

    - `compute_output_spec`: refuses integer and bool inputs when a model is
      built symbolically, as `call` does at run time, then runs the
      subclass's `_check_symbolic(inputs)`;
    - `compute_output_shape`: the input shape;
    - `get_config`: the base config plus each name in `CONFIG`.
    """

    CONFIG = ()

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Symbolic calls (`keras.Input(..., dtype="int32")`) refuse integer
        # inputs too, when the model is built rather than at its first step.
        check_input_dtype(type(self).__name__, inputs)
        self._check_symbolic(inputs)
        return super().compute_output_spec(inputs, *args, **kwargs)

    def _check_symbolic(self, inputs):
        """Further checks of symbolic inputs, before the symbolic call."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self.CONFIG})
        return config
