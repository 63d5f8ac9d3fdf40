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


def tensorflow():
    """The TensorFlow module, imported on first use.

    For code that builds TensorFlow objects on purpose whatever the Keras
    backend (the mixing layers' `tf.data` operations); importing it here
    keeps every framework import in this module.
    """
    import tensorflow as tf

    return tf


def variable_scope(model):
    """Context in which variables made during `fit` follow `model`'s replicas.

    TensorFlow: the model's `tf.distribute` strategy scope, so a variable is
    mirrored like the ones it shadows (a no-op without a strategy). JAX
    places a variable from its `layout` (or the global distribution), and
    torch has no such scope: a null context.
    """
    import contextlib

    strategy = getattr(model, "distribute_strategy", None)
    if _name() == "tensorflow" and strategy is not None:
        return strategy.scope()
    return contextlib.nullcontext()


def value_and_grad(fn):
    """`fn(values, *args) -> (loss, aux)` turned into a gradient function.

    The returned function gives `((loss, aux), grads)`, with `grads` the
    gradients of `loss` with respect to the list of tensors `values` (zeros
    where `loss` does not depend on one), for training steps that evaluate
    the model on tensors rather than on its variables (a
    `keras.StatelessScope`), such as `SharpnessAwareMinimization`'s two
    passes. JAX: `jax.value_and_grad`; TensorFlow: a `GradientTape` that
    watches `values` only; torch: `torch.autograd.grad` on detached copies
    of `values`, with `aux` detached.
    """
    name = _name()
    if name == "jax":
        import jax

        return jax.value_and_grad(fn, has_aux=True)
    if name == "tensorflow":
        import tensorflow as tf

        def tf_value_and_grad(values, *args):
            values = list(values)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(values)
                loss, aux = fn(values, *args)
            grads = tape.gradient(
                loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            return (loss, aux), list(grads)

        return tf_value_and_grad
    if name != "torch":
        raise NotImplementedError(f"No gradients on the {name} backend.")
    import torch

    def torch_value_and_grad(values, *args):
        values = [v.detach().requires_grad_(True) for v in values]
        with torch.enable_grad():
            loss, aux = fn(values, *args)
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        grads = [
            torch.zeros_like(v) if g is None else g
            for v, g in zip(values, grads)
        ]
        aux = tree_detach(aux)
        return (loss.detach(), aux), grads

    def tree_detach(structure):
        import keras

        return keras.tree.map_structure(
            lambda t: (
                t.detach()
                if isinstance(t, torch.Tensor) and t.requires_grad
                else t
            ),
            structure,
        )

    return torch_value_and_grad


_RUNNING_MEAN = {}


def running_mean_update(averages, sources, scale):
    """`a <- a + (float32(w) - a) * scale` for every pair, one pass each.

    `averages` are float32 `keras.Variable`s, `sources` the variables they
    average, `scale` a Python float (`1 / n` for an equal-weight mean).
    torch: an in-place `lerp_` per variable. JAX: one compiled program for
    every pair, updating the averages' buffers in place (donated).
    TensorFlow: one XLA-compiled function outside a `tf.distribute`
    strategy; eager ops under one (mirrored variables are assigned in
    cross-replica context).
    """
    import keras

    name = _name()
    if name == "torch":
        import torch

        with torch.no_grad():
            for a, w in zip(averages, sources):
                a.value.lerp_(w.value.to(torch.float32), scale)
        return
    if name == "jax":
        import jax

        step = _RUNNING_MEAN.get("jax")
        if step is None:

            def update(avgs, values, s):
                return [
                    a + (w.astype("float32") - a) * s
                    for a, w in zip(avgs, values)
                ]

            # The old averages are donated: updated in place, with no new
            # buffers (measured ~10x faster on CPU than allocating them).
            step = _RUNNING_MEAN["jax"] = jax.jit(update, donate_argnums=0)
        new = step(
            [a.value for a in averages], [w.value for w in sources], scale
        )
        for a, value in zip(averages, new):
            a.assign(value)
        return
    if name == "tensorflow":
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            step = _RUNNING_MEAN.get("tensorflow")
            if step is None:

                def update(avgs, values, s):
                    for a, w in zip(avgs, values):
                        a.assign_add((tf.cast(w, "float32") - a) * s)

                step = _RUNNING_MEAN["tensorflow"] = tf.function(
                    update, jit_compile=True, reduce_retracing=True
                )
            step(
                [a.value for a in averages],
                [w.value for w in sources],
                tf.constant(scale, "float32"),
            )
            return
    ops = keras.ops
    for a, w in zip(averages, sources):
        value = ops.cast(w.value, "float32")
        a.assign(a.value + (value - a.value) * scale)


def replica_id():
    """Which replica of a data-parallel step this code runs on.

    TensorFlow: `replica_id_in_sync_group` of the current replica context,
    an int32 tensor inside `strategy.run` (traceable, also under XLA); 0 in
    the cross-replica context or without a strategy. torch: the process
    group rank when `torch.distributed` is initialized (DDP), else 0. JAX:
    always 0, since `keras.distribution` compiles one program over the
    global batch. The Python int 0 whenever there is a single replica, so
    callers can keep the single-device path unchanged.
    """
    name = _name()
    if name == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return 0
        return context.replica_id_in_sync_group
    if name == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    return 0
