"""The only module allowed to import a framework directly (lazily).

Library code is written with `keras`, `keras.ops` and `keras.random`; a
backend-specific fast path, if one is ever needed, goes here behind a function
keyed on `keras.config.backend()` and imports its framework inside that
function.
"""


def torch_lerp(start, end, weight):
    """`start + weight * (end - start)` in one pass (torch eager fast path).

    Exact at `weight` 0 and 1, which the mixing layers rely on for samples
    left unmixed.
    """
    import torch

    return torch.lerp(start, end, weight)


def tf_mixing_ops(layer):
    """TensorFlow operations for a mixing layer inside `tf.data`.

    Used when a `tf.data` pipeline calls a mixing layer while the Keras
    backend is jax or torch: the tensors are TensorFlow graph tensors then,
    which `keras.ops` of those backends cannot take. Returns an object with
    the interface of `keras_regularize.layers._mixing.KerasOps`, drawing from
    a `tf.random.Generator` seeded with `layer.seed` and kept on the layer.
    Hyperparameter variables are read when the map function is traced.
    """
    import tensorflow as tf

    state = layer._tf_data_state
    if "generator" not in state:
        with tf.init_scope():
            if layer.seed is None:
                generator = tf.random.Generator.from_non_deterministic_state()
            else:
                generator = tf.random.Generator.from_seed(layer.seed)
        state["generator"] = generator
    return _TFOps(tf, state["generator"])


class _TFOps:
    def __init__(self, tf, generator):
        self.tf = tf
        self.generator = generator

    def shape(self, x):
        static = x.shape.as_list()
        dynamic = self.tf.shape(x)
        return tuple(
            dynamic[i] if s is None else s for i, s in enumerate(static)
        )

    def cast(self, x, dtype):
        return self.tf.cast(x, dtype)

    def convert(self, x):
        return self.tf.convert_to_tensor(x)

    def argmax(self, x, axis):
        return self.tf.argmax(x, axis=axis, output_type="int32")

    def take_along_axis(self, x, indices, axis):
        return self.tf.experimental.numpy.take_along_axis(x, indices, axis)

    def argsort(self, x):
        return self.tf.argsort(x)

    def where(self, condition, a, b):
        a = self.tf.convert_to_tensor(a)
        b = self.tf.cast(b, a.dtype)
        return self.tf.where(condition, a, b)

    def reshape(self, x, shape):
        return self.tf.reshape(x, shape)

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

    def arange(self, n):
        return self.tf.range(n, dtype="int32")

    def take(self, x, indices):
        return self.tf.gather(x, indices, axis=0)

    def one_hot(self, ids, num_classes):
        return self.tf.one_hot(ids, num_classes, dtype="float32")

    def ones(self, shape):
        return self.tf.ones(shape, dtype="float32")

    def dtype(self, x):
        return x.dtype.name

    def value(self, variable):
        import keras

        # Read on the host when the map function is traced.
        with self.tf.init_scope():
            value = float(keras.ops.convert_to_numpy(variable))
        return self.tf.constant(value, "float32")

    def blend(self, x, x_partner, w):
        return x * w + x_partner * (1.0 - w)

    def require(self, valid, values, name, expected, guard=None):
        """`KerasOps.require` for TensorFlow tensors (eager or graph)."""
        if self.tf.executing_eagerly():
            import numpy as np

            from keras_regularize._validation import fail

            ok = np.asarray(valid).astype(bool)
            if not ok.all():
                bad = np.broadcast_to(np.asarray(values), ok.shape)
                fail(name, expected, bad[~ok].flat[0].item())
            return guard
        return self.assert_in_graph(valid, values, name, expected, guard)

    @staticmethod
    def assert_in_graph(valid, values, name, expected, guard=None):
        """Asserts `valid` in a TensorFlow graph, naming the first bad value.

        The graph raises `InvalidArgumentError` with the package's argument
        message; XLA drops the assertion (the callers then give NaN).
        Returns `guard` made to wait for the assertion, so the ops that use
        it (a loss that would fail on the same values) run after it.
        """
        import tensorflow as tf

        ok = tf.reshape(tf.cast(valid, "bool"), [-1])
        values = tf.reshape(tf.broadcast_to(values, tf.shape(valid)), [-1])
        # A trailing valid entry keeps argmin defined for empty batches.
        ok = tf.concat([ok, [True]], axis=0)
        values = tf.concat([values, tf.zeros([1], values.dtype)], axis=0)
        first = tf.argmin(tf.cast(ok, "int32"), output_type="int32")
        # Constant strings only: XLA has no string kernels (it drops the
        # assertion, but compiles its inputs). TensorFlow prints this as
        # "[... Received: labels=] [5]".
        message = (
            f"Invalid value received for argument `{name}`. Expected "
            f"{expected}. Received: {name}="
        )
        check = tf.debugging.Assert(
            tf.reduce_all(ok), [message, tf.gather(values, first)], summarize=1
        )
        if guard is None:
            return None
        with tf.control_dependencies([check]):
            return tf.identity(guard)

    def uniform(self, shape):
        return self.generator.uniform(shape, dtype="float32")

    def normal(self, shape):
        return self.generator.normal(shape, dtype="float32")


def replicas_in_sync():
    """Replicas a TensorFlow `tf.distribute` strategy splits each step over.

    Keras's TensorFlow trainer expects `compute_loss` to return the
    per-replica loss divided by this number (its own losses do so) and
    multiplies it back for the logs. Always 1 on the other backends.
    """
    import keras

    if keras.config.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def is_concrete_tensor(x):
    """Whether the host can read the values of backend tensor `x` now.

    False for traced values: TensorFlow graph tensors, JAX tracers, and the
    fake or meta tensors torch uses to infer shapes and to compile.
    """
    cls = type(x)
    module, name = cls.__module__, cls.__name__
    if module.startswith("tensorflow"):
        return name == "EagerTensor"
    if module.startswith("jax"):
        return "Tracer" not in name
    if module.startswith("torch"):
        return not getattr(x, "is_meta", False) and name not in (
            "FakeTensor",
            "FunctionalTensor",
        )
    return False


def assert_in_graph(valid, values, name, expected, guard=None):
    """A graph assertion naming the first bad value, for TensorFlow graphs.

    `valid` from a `tf.function` or `tf.data` graph gets an assertion that
    raises `InvalidArgumentError` with the package's message, and `guard`
    made to wait for it. Any other tensor (traced JAX, XLA, torch.compile)
    cannot raise on data: `guard` comes back unchanged.
    """
    if not type(valid).__module__.startswith("tensorflow"):
        return guard
    return _TFOps.assert_in_graph(valid, values, name, expected, guard)


def _name():
    import keras

    return keras.config.backend()


def steps_run_eagerly():
    """Whether training steps run Python eagerly, so an untaken branch can
    simply be skipped (torch), rather than traced into a `cond`."""
    return _name() == "torch"


def blend(x, x_partner, w):
    """`w * x + (1 - w) * x_partner`, exact for `w` in `{0, 1}`.

    On torch, one fused `lerp` pass; elsewhere plain arithmetic, which XLA
    fuses itself.
    """
    if _name() == "torch":
        return torch_lerp(x_partner, x, w)
    return x * w + x_partner * (1.0 - w)


def is_tf_tensor(value):
    """Whether `value` is a TensorFlow tensor (eager or graph)."""
    return type(value).__module__.startswith("tensorflow")


def is_foreign_tf_data(values):
    """Whether TensorFlow tensors reach a layer under another backend.

    That is a `tf.data` pipeline under the jax or torch backend, where the
    backend's `keras.ops` cannot take the tensors.
    """
    import keras

    if _name() == "tensorflow":
        return False
    return any(is_tf_tensor(v) for v in keras.tree.flatten(values))


def weight_snapshot_kind():
    """How `EarlyStoppingRestore` keeps best weights on this backend.

    `"variable"`: device-side variables updated with `assign` (TensorFlow,
    torch). Under JAX, `"host"` (NumPy buffers, measured faster than XLA's
    CPU copy) when every device is a CPU, else `"copy"` (`ops.copy` on the
    device).
    """
    import keras

    if _name() != "jax":
        return "variable"
    devices = keras.distribution.list_devices()
    on_cpu = all(str(d).lower().startswith("cpu") for d in devices)
    return "host" if on_cpu else "copy"


# Rows one tiled MC-dropout pass takes, from `bench/mc_dropout_bench.py` on
# an idle 2-core CPU; the tiled strategy won on every backend.
MC_ROWS_PER_PASS = {"jax": 1024, "tensorflow": 4096, "torch": 4096}


def mc_rows_per_pass():
    """Default rows per tiled pass of `mc_predict` on this backend."""
    return MC_ROWS_PER_PASS.get(_name(), 1024)


def sync_model_state(model):
    """Writes a running `fit`'s live weights back into `model`'s variables.

    JAX's trainer keeps the state outside the variables during an epoch
    (`jax_state_sync`); the other trainers update the variables in place,
    so there is nothing to do.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()
