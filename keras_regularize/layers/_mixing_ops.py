"""The two operation sets the mixing maths runs on: Keras and TensorFlow.

The maths in `_mixing_math` takes `xp`, an object with the operations in
`OPERATIONS` (array operations, seeded random draws, hyperparameter reads
and data checks) and nothing else. Two sets implement them, side by side:

- `KerasOps`: `keras.ops`/`keras.random` on the active backend; the normal
  path, eager or inside any compiled step.
- `TFOps`: TensorFlow operations, for a `tf.data` pipeline that calls a
  mixing layer while the Keras backend is jax or torch. The tensors are
  TensorFlow graph tensors then, which those backends' `keras.ops` cannot
  take. Its state (`TFDataState`) belongs to the layer.

`tests/layers/mixing_ops_test.py` runs every operation through both sets
and compares the results.
"""

import keras
from keras import ops

from keras_regularize import _backend
from keras_regularize._value_checks import require
from keras_regularize.layers._seeded import draw_seed

# The interface: every name here is implemented by both sets, and the
# parity test covers each one.
OPERATIONS = (
    "shape",
    "cast",
    "convert",
    "dtype",
    "arange",
    "ones",
    "one_hot",
    "reshape",
    "take",
    "take_along_axis",
    "argsort",
    "argmax",
    "where",
    "log",
    "sqrt",
    "sigmoid",
    "floor",
    "round",
    "minimum",
    "maximum",
    "clip",
    "power",
    "logical_and",
    "logical_not",
    "blend",
    "uniform",
    "normal",
    "scalar",
    "require",
)


class KerasOps:
    """The mixing operations on the active Keras backend.

    Args:
        seed_generator: The `keras.random.SeedGenerator` random draws use.
        scalars: Optional callable, `scalars(name)` returns hyperparameter
            `name` as a float32 tensor (read from its variable).
    """

    def __init__(self, seed_generator, scalars=None):
        self.seed_generator = seed_generator
        self.scalars = scalars

    shape = staticmethod(ops.shape)
    cast = staticmethod(ops.cast)
    convert = staticmethod(ops.convert_to_tensor)
    reshape = staticmethod(ops.reshape)
    take_along_axis = staticmethod(ops.take_along_axis)
    argsort = staticmethod(ops.argsort)
    argmax = staticmethod(ops.argmax)
    where = staticmethod(ops.where)
    log = staticmethod(ops.log)
    sqrt = staticmethod(ops.sqrt)
    sigmoid = staticmethod(ops.sigmoid)
    floor = staticmethod(ops.floor)
    round = staticmethod(ops.round)
    minimum = staticmethod(ops.minimum)
    maximum = staticmethod(ops.maximum)
    clip = staticmethod(ops.clip)
    power = staticmethod(ops.power)
    logical_and = staticmethod(ops.logical_and)
    logical_not = staticmethod(ops.logical_not)
    blend = staticmethod(_backend.blend)
    require = staticmethod(require)

    @staticmethod
    def dtype(x):
        return keras.backend.standardize_dtype(x.dtype)

    @staticmethod
    def arange(n):
        return ops.arange(n, dtype="int32")

    @staticmethod
    def ones(shape):
        return ops.ones(shape, dtype="float32")

    @staticmethod
    def one_hot(ids, num_classes):
        return ops.one_hot(ids, num_classes, dtype="float32")

    @staticmethod
    def take(x, indices):
        return ops.take(x, indices, axis=0)

    def scalar(self, name):
        return self.scalars(name)

    def uniform(self, shape):
        return keras.random.uniform(
            shape, dtype="float32", seed=draw_seed(self)
        )

    def normal(self, shape):
        return keras.random.normal(shape, dtype="float32", seed=draw_seed(self))


class TFOps:
    """The mixing operations with TensorFlow, for `tf.data` graphs.

    Args:
        generator: The `tf.random.Generator` random draws use.
        scalars: Optional callable, `scalars(name)` returns hyperparameter
            `name` as a float32 TensorFlow tensor.
    """

    def __init__(self, generator, scalars=None):
        self.tf = _backend.tensorflow()
        self.generator = generator
        self.scalars = scalars

    # Graph tensors are checked by an assertion, eager ones on the host
    # (see `_value_checks.require`).
    require = staticmethod(require)

    @staticmethod
    def blend(x, x_partner, w):
        """`w * x + (1 - w) * x_partner`, exact for `w` in `{0, 1}`."""
        return x * w + x_partner * (1.0 - w)

    def shape(self, x):
        """Static sizes where known, scalar tensors for the others."""
        dynamic = self.tf.shape(x)
        return tuple(
            dynamic[i] if s is None else s
            for i, s in enumerate(x.shape.as_list())
        )

    def cast(self, x, dtype):
        return self.tf.cast(x, dtype)

    def convert(self, x):
        return self.tf.convert_to_tensor(x)

    def dtype(self, x):
        return x.dtype.name

    def arange(self, n):
        return self.tf.range(n, dtype="int32")

    def ones(self, shape):
        return self.tf.ones(shape, dtype="float32")

    def one_hot(self, ids, num_classes):
        return self.tf.one_hot(ids, num_classes, dtype="float32")

    def reshape(self, x, shape):
        return self.tf.reshape(x, shape)

    def take(self, x, indices):
        return self.tf.gather(x, indices, axis=0)

    def take_along_axis(self, x, indices, axis):
        return self.tf.experimental.numpy.take_along_axis(x, indices, axis)

    def argsort(self, x):
        return self.tf.argsort(x)

    def argmax(self, x, axis):
        return self.tf.argmax(x, axis=axis, output_type="int32")

    def where(self, condition, a, b):
        a = self.tf.convert_to_tensor(a)
        return self.tf.where(condition, a, self.tf.cast(b, a.dtype))

    def log(self, x):
        return self.tf.math.log(x)

    def sqrt(self, x):
        return self.tf.sqrt(x)

    def sigmoid(self, x):
        return self.tf.sigmoid(x)

    def floor(self, x):
        return self.tf.floor(x)

    def round(self, x):
        return self.tf.round(x)

    def minimum(self, a, b):
        return self.tf.minimum(a, b)

    def maximum(self, a, b):
        return self.tf.maximum(a, b)

    def clip(self, x, low, high):
        return self.tf.clip_by_value(x, low, high)

    def power(self, x, y):
        return self.tf.pow(x, y)

    def logical_and(self, a, b):
        return self.tf.logical_and(a, b)

    def logical_not(self, x):
        return self.tf.logical_not(x)

    def scalar(self, name):
        return self.scalars(name)

    def uniform(self, shape):
        return self.generator.uniform(shape, dtype="float32")

    def normal(self, shape):
        return self.generator.normal(shape, dtype="float32")


class TFDataState:
    """A mixing layer's TensorFlow state for `tf.data` under jax or torch.

    It holds a `tf.random.Generator` and one float32 `tf.Variable` per
    hyperparameter, which the traced `tf.data` graph reads on every batch.
    Each is created on first use inside `tf.init_scope`, so tracing a map
    function creates it eagerly, once, from the layer's current value.
    The layer calls `assign` from its setters, so a value a callback sets
    reaches the next batches the pipeline prepares (batches already
    prefetched were mixed with the old value).
    """

    def __init__(self):
        self.generator = None
        self.variables = {}

    def ops(self, seed, host_value):
        """`TFOps` drawing from this state.

        Args:
            seed: The layer's seed (`None`: a non-deterministic generator).
            host_value: Callable, `host_value(name)` is the float a
                hyperparameter's variable starts from.
        """
        tf = _backend.tensorflow()
        if self.generator is None:
            generators = tf.random.Generator
            with tf.init_scope():
                self.generator = (
                    generators.from_non_deterministic_state()
                    if seed is None
                    else generators.from_seed(seed)
                )

        def scalars(name):
            if name not in self.variables:
                with tf.init_scope():
                    self.variables[name] = tf.Variable(
                        host_value(name), trainable=False, dtype="float32"
                    )
            return self.variables[name].read_value()

        return TFOps(self.generator, scalars)

    def assign(self, name, value):
        """Sets the copy of `name`, if one exists, to the new `value`."""
        variable = self.variables.get(name)
        if variable is not None and value is not None:
            variable.assign(value)
