"""Training runs for tests/distributed/engines_test.py, each in a fresh
Python process.

Device counts (`XLA_FLAGS`, TensorFlow logical devices) and process groups
must be set before the framework starts, so the tests launch this script
with `sys.executable` and read the one JSON line it prints after `RESULT `:

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/distributed/_engines_worker.py jax_data_parallel '{}'

The results are raw facts (losses, weight differences, decisions, error
texts); engines_test.py makes the assertions.

Components are exercised through `CASES`: a case builds a compiled model and
its data from `(rate, seed)`. To cover a new component (`MixingModel`,
`Distiller`), write one builder and add it to `CASES`; the engines' tests
take their case names from `CASES`.
"""

import os
import sys

if __name__ == "__main__" and sys.argv[1].startswith("tf_"):
    # Two logical CPU devices; only possible before TensorFlow initializes.
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_regularize as kr  # noqa: E402
from tests.distributed._launch import serve  # noqa: E402
from tests.harness import ScriptedMonitor  # noqa: E402

# -- components under test -------------------------------------------------


def _data(n=64, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) / 4.0).astype("float32")
    return x, y


def stochastic_depth_case(rate, seed, mode="batch"):
    """Dense trunk with a `StochasticResidual` block and a `DropPath` branch.

    `mode="batch"` makes both layers take one draw per step, so a replica
    that decided differently from the others would change the result.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="tanh")(inputs)
    h = kr.layers.StochasticResidual(
        keras.layers.Dense(16, activation="tanh"),
        rate=rate,
        mode=mode,
        seed=seed + 1,
    )(h)
    branch = keras.layers.Dense(16, activation="tanh")(h)
    branch = kr.layers.DropPath(rate, mode=mode, seed=seed + 2)(branch)
    h = keras.layers.Add()([h, branch])
    outputs = keras.layers.Dense(1)(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model, _data()


def stochastic_depth_row_case(rate, seed):
    """The same model with one draw per sample (shards draw differently)."""
    return stochastic_depth_case(rate, seed, mode="row")


def _classes(n=64, features=8, seed=0):
    x, _ = _data(n, features, seed)
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    return x, y


def _classifier(rate, seed, width=16):
    inputs = keras.Input((8,))
    h = keras.layers.Dense(width, activation="tanh")(inputs)
    branch = keras.layers.Dense(width, activation="tanh")(h)
    branch = kr.layers.DropPath(rate, seed=seed)(branch)
    h = keras.layers.Add()([h, branch])
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def mixing_case(rate, seed):
    """`MixingModel` with Mixup; `rate=0` switches mixing off entirely."""
    keras.utils.set_random_seed(seed)
    mixer = kr.layers.MixupLayer(
        alpha=0.4, probability=1.0 if rate else 0.0, seed=seed + 1
    )
    model = kr.models.MixingModel(_classifier(rate, seed + 2), mixer)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, _classes()


def distiller_case(rate, seed):
    """`Distiller` from a fixed teacher into a student with `DropPath`."""
    keras.utils.set_random_seed(seed)
    teacher = _classifier(0.0, seed + 3, width=32)
    student = _classifier(rate, seed + 4)
    model = kr.models.Distiller(
        student=student, teacher=teacher, temperature=2.0, alpha=0.5
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model, _classes()


CASES = {
    "stochastic_depth": stochastic_depth_case,
    "stochastic_depth_row": stochastic_depth_row_case,
    "mixing": mixing_case,
    "distiller": distiller_case,
}


def _plugged_cases():
    """Cases from `tests/distributed/_cases_*.py`, each exposing `CASES`.

    A component's own file adds its builders there (weight averaging, SAM,
    ...), so no two components edit this worker. A builder may return
    `(model, data, callbacks)`: the callbacks train beside the scripted
    monitor and `EarlyStoppingRestore`, after them in the list.
    """
    import importlib

    found = {}
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if name.startswith("_cases_") and name.endswith(".py"):
            module = importlib.import_module(f"tests.distributed.{name[:-3]}")
            found.update(module.CASES)
    return found


CASES.update(_plugged_cases())


def _build(case, rate, seed):
    """`(model, (x, y), callbacks)` of a case."""
    built = CASES[case](rate, seed)
    model, data = built[0], built[1]
    return model, data, list(built[2]) if len(built) > 2 else []


# Scripted monitor values: the best epoch (1) is not the last one, so a
# restore is visible in the weights.
SCORES = [3.0, 1.0, 2.0, 4.0]


def _max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


def _fit(case, rate, seed, batch_size):
    """Trains a case with EarlyStoppingRestore attached; returns a summary."""
    model, (x, y), extra = _build(case, rate, seed)
    script = ScriptedMonitor(SCORES, monitor="score")
    stop = kr.callbacks.EarlyStoppingRestore(
        monitor="score", mode="min", patience=5
    )
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=len(SCORES),
        shuffle=False,
        callbacks=[script, stop, *extra],
        verbose=0,
    )
    final = [np.array(w) for w in model.get_weights()]
    return {
        "loss": [float(v) for v in history.history["loss"]],
        "best_epoch": stop.best_epoch,
        "restored": stop.restored,
        # The restored weights are those of the best epoch, not the last.
        "restore_error": _max_diff(final, script.weights[stop.best_epoch]),
        "replicas": _replicas(model.trainable_weights[0]),
        "last_vs_best": _max_diff(script.weights[-1], script.weights[1]),
        "weights": final,
    }


class ForceTraining(keras.layers.Layer):
    """Runs the wrapped layers in training mode, even inside `predict`."""

    def __init__(self, wrapped, **kwargs):
        super().__init__(**kwargs)
        self.wrapped = wrapped

    def call(self, x):
        outputs = [layer(x, training=True) for layer in self.wrapped]
        return keras.ops.concatenate(outputs, axis=-1)


class ReplicaDraws(keras.layers.Layer):
    """Every per-sample or per-element draw of the random layers, as columns.

    On a batch of ones, in training mode: which samples `DropPath(row)`
    keeps, which samples `StochasticResidual(subset)` runs its block on,
    `DropBlock2D`'s and `MCDropout`'s kept elements (4 each), the output of
    a `WeightNoise` Dense (its noised kernel, one per replica), and the
    mixing layers' per-sample lambdas and partners (`elem` mode).
    """

    # Columns of the output, and how many each takes.
    COLUMNS = {
        "drop_path": 1,
        "subset": 1,
        "drop_block": 4,
        "mc_dropout": 4,
        "weight_noise": 1,
        "mixup_lam": 1,
        "mixup_partner": 1,
        "cutmix_lam": 1,
        "cutmix_partner": 1,
    }
    # Draws that are keep/drop flags at keep probability 0.5.
    KEPT = ("drop_path", "subset", "drop_block", "mc_dropout")
    MIXING = ("mixup_lam", "mixup_partner", "cutmix_lam", "cutmix_partner")

    def __init__(self, mixing=True, **kwargs):
        super().__init__(**kwargs)
        self.mixing = mixing
        self.columns = {
            k: v
            for k, v in self.COLUMNS.items()
            if mixing or k not in self.MIXING
        }
        layers = kr.layers
        self.row = layers.DropPath(0.5, mode="row", seed=9)
        self.subset = layers.StochasticResidual(
            keras.layers.Dense(4, kernel_initializer="ones"),
            rate=0.5,
            mode="subset",
            seed=10,
        )
        self.drop_block = layers.DropBlock2D(0.5, block_size=1, seed=11)
        self.mc = layers.MCDropout(0.5, seed=12)
        self.noise = layers.WeightNoise(
            keras.layers.Dense(1, kernel_initializer="ones", use_bias=False),
            stddev=1.0,
            seed=13,
        )
        self.mixup = layers.MixupLayer(alpha=1.0, mode="elem", seed=14)
        # RandomMix draws through the same operations as these two.
        self.cutmix = layers.CutMixLayer(alpha=1.0, mode="elem", seed=15)

    def call(self, x):
        ops = keras.ops
        images = ops.reshape(x, (-1, 2, 2, 1))
        columns = [
            self.row(x, training=True)[:, :1] > 0.5,
            self.subset(x, training=True)[:, :1] > 1.5,
            ops.reshape(self.drop_block(images, training=True), (-1, 4)) > 0,
            self.mc(x, training=True) > 0.5,
            self.noise(x, training=True),
        ]
        if self.mixing:
            _, mix_lam, mix_partner = self.mixup.mix_images(images)
            _, cut_lam, cut_partner = self.cutmix.mix_images(images)
            columns += [
                ops.expand_dims(v, -1)
                for v in (mix_lam, mix_partner, cut_lam, cut_partner)
            ]
        return ops.concatenate([ops.cast(c, "float32") for c in columns], -1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], sum(self.columns.values()))


def _replica_draws(out, batches, replicas, columns):
    """Per-layer facts about the replicas' draws, from `ReplicaDraws` rows.

    `out` is `(batches, batch_size, columns)`. For each layer: the steps in
    which every replica's draws equal replica 0's (all of them when the
    replicas repeat one draw; by chance only, when they are independent),
    the draws themselves, and for keep/drop layers each replica's kept
    count out of its draws over all steps.
    """
    facts, start = {}, 0
    for name, width in columns.items():
        values = out[..., start : start + width]
        start += width
        shards = values.reshape(batches, replicas, -1)
        fact = {
            "identical_steps": int(
                sum(all(np.array_equal(s[0], r) for r in s[1:]) for s in shards)
            ),
            "values": values.reshape(batches, -1).tolist(),
        }
        if name in ReplicaDraws.KEPT:
            per_replica = shards.transpose(1, 0, 2).reshape(replicas, -1)
            fact["kept"] = per_replica.sum(axis=1).astype(int).tolist()
            fact["draws"] = int(per_replica.shape[1])
        facts[name] = fact
    return facts


def _decisions(batches, batch_size, replicas, mixing=True):
    """Per-step keep/drop decisions and draws, read off every shard.

    All samples are equal, so within one step every row of the batch-mode
    outputs must be equal unless a replica drew its own decision. The
    residual block adds `4 / keep` when kept (kernel of ones, rows of ones).
    The per-sample draws of every random layer (`ReplicaDraws`) are
    recorded per replica, to see that replicas draw independently
    (`mixing=False` leaves the mixing layers out).
    """
    residual = kr.layers.StochasticResidual(
        keras.layers.Dense(4, kernel_initializer="ones"), rate=0.5, seed=7
    )
    drop_path = kr.layers.DropPath(0.5, mode="batch", seed=8)
    inputs = keras.Input((4,))
    batch_out = ForceTraining([residual, drop_path])(inputs)
    draws_layer = ReplicaDraws(mixing=mixing)
    model = keras.Model(inputs, [batch_out, draws_layer(inputs)])
    x = np.ones((batches * batch_size, 4), "float32")
    batch_mode, draws = model.predict(x, batch_size=batch_size, verbose=0)
    batch_mode = np.asarray(batch_mode).reshape(batches, batch_size, 8)
    draws = np.asarray(draws).reshape(batches, batch_size, -1)
    return {
        # Distinct rows per step: 1 everywhere when replicas agree.
        "distinct_rows": [len({r.tobytes() for r in s}) for s in batch_mode],
        "residual_kept": [bool(s[0, 0] > 1.5) for s in batch_mode],
        "drop_path_kept": [bool(s[0, 4] > 0.5) for s in batch_mode],
        "replicas": replicas,
        "draws": _replica_draws(draws, batches, replicas, draws_layer.columns),
    }


def _replicas(variable):
    """How many devices hold a copy of `variable`."""
    value = variable.value
    if keras.backend.backend() == "jax":
        return len(value.sharding.device_set)
    return len(getattr(value, "values", [value]))


def _equivalence(distributed_fit):
    """Single-device vs distributed runs of every case, plus a learning run."""
    result = {}
    for case in CASES:
        for rate in (0.0, 0.5):
            single = _fit(case, rate, seed=1, batch_size=16)
            multi = distributed_fit(case, rate)
            result[f"{case}/{rate}"] = {
                "single_loss": single["loss"],
                "multi_loss": multi["loss"],
                "weight_diff": _max_diff(single["weights"], multi["weights"]),
                "best_epoch": multi["best_epoch"],
                "restored": multi["restored"],
                "restore_error": multi["restore_error"],
                "last_vs_best": multi["last_vs_best"],
                "single_replicas": single["replicas"],
                "multi_replicas": multi["replicas"],
            }
    return result


def _spec(value):
    """A JAX array's partition spec as a list of axis names, or `"host"`."""
    sharding = getattr(value, "sharding", None)
    if sharding is None or not hasattr(sharding, "spec"):
        return "host"
    spec = list(sharding.spec)
    while spec and spec[-1] is None:  # ("model", None) means ("model",)
        spec.pop()
    return [None if a is None else str(a) for a in spec]


class LayoutProbe(keras.callbacks.Callback):
    """Records, after the callbacks before it, where their copies live.

    Placed after `EarlyStoppingRestore` and `ExponentialMovingAverage`, at
    each epoch end: the partition spec of every model weight, of its copy
    in the early-stopping snapshot, and of its moving average; and of a
    `WeightSnapshot(kind="copy")` capture (the accelerator path).
    """

    def __init__(self, stop, ema):
        super().__init__()
        self.stop, self.ema, self.records = stop, ema, []

    def on_epoch_end(self, epoch, logs=None):
        from keras_regularize.callbacks._weight_snapshot import WeightSnapshot

        model = self.model
        weights = list(model.weights)
        snapshot = self.stop._snapshot
        copy = WeightSnapshot(kind="copy")
        copy.capture(model)
        averaged = {
            id(v): a for v, a in zip(self.ema._sources, self.ema._averages)
        }
        self.records.append(
            {
                "names": [v.path for v in weights],
                "weights": [_spec(v.value) for v in weights],
                "snapshot_kind": snapshot.kind,
                "snapshot": [_spec(a) for a in snapshot.values or []],
                "copy_snapshot": [_spec(a) for a in copy.values],
                "averages": [
                    _spec(averaged[id(v)].value) if id(v) in averaged else None
                    for v in weights
                ],
            }
        )


def _model_parallel(devices):
    """A sharded model with DropPath, MaxNorm, EarlyStoppingRestore and EMA.

    `ModelParallel` over a (2 batch x 4 model) mesh; the hidden Dense
    kernels are split over their output units on the "model" axis.
    """
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["hidden.*kernel"] = (None, "model")
    layout_map["hidden.*bias"] = ("model",)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
    )
    try:
        keras.utils.set_random_seed(1)
        inputs = keras.Input((8,))
        h = keras.layers.Dense(16, activation="tanh", name="hidden_0")(inputs)
        branch = keras.layers.Dense(16, activation="tanh", name="hidden_1")(h)
        branch = kr.layers.DropPath(0.5, seed=2)(branch)
        h = keras.layers.Add()([h, branch])
        model = keras.Model(inputs, keras.layers.Dense(1, name="head")(h))
        kr.constraints.apply_max_norm(model, max_value=0.5)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        script = ScriptedMonitor(SCORES, monitor="score")
        stop = kr.callbacks.EarlyStoppingRestore(
            monitor="score", mode="min", patience=5
        )
        ema = kr.callbacks.ExponentialMovingAverage(
            decay=0.9, evaluate=False, final="raw"
        )
        probe = LayoutProbe(stop, ema)
        x, y = _data()
        history = model.fit(
            x,
            y,
            batch_size=16,
            epochs=len(SCORES),
            shuffle=False,
            callbacks=[script, stop, ema, probe],
            verbose=0,
        )
        kernels = {
            v.path: np.array(v.value) for v in model.weights if v.ndim == 2
        }
        return {
            "loss": [float(v) for v in history.history["loss"]],
            "restored": stop.restored,
            "restore_error": _max_diff(
                [np.array(w) for w in model.get_weights()],
                script.weights[stop.best_epoch],
            ),
            # Per output unit (column) of every kernel: its incoming norm.
            "unit_norms": {
                k: np.linalg.norm(v, axis=0).tolist()
                for k, v in kernels.items()
            },
            "layouts": probe.records[-1],
            "final_weights": [_spec(v.value) for v in model.weights],
        }
    finally:
        keras.distribution.set_distribution(None)


# -- engines -----------------------------------------------------------------


def jax_data_parallel():
    devices = keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)

    def distributed_fit(case, rate):
        keras.distribution.set_distribution(distribution)
        try:
            return _fit(case, rate, seed=1, batch_size=16)
        finally:
            keras.distribution.set_distribution(None)

    result = {"devices": len(devices), "cases": _equivalence(distributed_fit)}
    result["model_parallel"] = _model_parallel(devices)
    keras.distribution.set_distribution(distribution)
    # Mixing draws are global under DataParallel like every other draw
    # (the mixing case equals single-device training); left out here, as
    # they would double this compile's time.
    result["decisions"] = _decisions(24, 16, len(devices), mixing=False)
    # A batch that the 8 devices cannot share equally.
    model, (x, y), _ = _build("stochastic_depth", 0.1, 1)
    try:
        model.fit(x[:12], y[:12], batch_size=12, epochs=1, verbose=0)
        result["indivisible_error"] = None
    except Exception as error:  # noqa: BLE001 - reported to the test
        result["indivisible_error"] = f"{type(error).__name__}: {error}"
    return result


def tf_mirrored():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def distributed_fit(case, rate, batch_size=16):
        with strategy.scope():
            return _fit(case, rate, seed=1, batch_size=batch_size)

    result = {
        "replicas": strategy.num_replicas_in_sync,
        "cases": _equivalence(distributed_fit),
    }
    # An odd global batch (15 on 2 replicas): Keras's TensorFlow trainer
    # fails loudly; recorded for our model and for a plain Dense model.
    x, y = _data()
    for name in ("stochastic_depth", "dense"):
        with strategy.scope():
            if name == "dense":
                model = keras.Sequential(
                    [keras.Input((8,)), keras.layers.Dense(1)]
                )
                model.compile(optimizer="sgd", loss="mse")
            else:
                model, _, _ = _build(name, 0.0, 1)
        try:
            model.fit(x[:45], y[:45], batch_size=15, epochs=1, verbose=0)
            result[f"odd_batch_error/{name}"] = None
        except Exception as error:  # noqa: BLE001 - reported to the test
            result[f"odd_batch_error/{name}"] = (
                f"{type(error).__name__}: {error}"
            )
    with strategy.scope():
        result["decisions"] = _decisions(24, 16, strategy.num_replicas_in_sync)
    return result


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torch_train(case, rate, x, y, steps, ddp_rank=None, noise=False):
    """A plain torch loop over a Keras model, as under DDP.

    Keras's `fit` has no DDP support (its torch trainer neither wraps the
    model nor all-reduces gradients), so data-parallel torch training uses
    the model as a `torch.nn.Module` in a torch loop. With `noise`, the
    all-reduced gradients go to a Keras `GradientNoise(SGD)` optimizer
    (`apply`) instead of torch's SGD.
    """
    import torch

    model, _, _ = _build(case, rate, seed=1)
    module = model
    if ddp_rank is not None:
        module = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05)
    if noise:
        noisy = kr.optimizers.GradientNoise(
            keras.optimizers.SGD(0.05), eta=0.5, seed=3
        )
        noisy.build(model.trainable_variables)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x, training=True), y)
        loss.backward()
        if noise:
            variables = model.trainable_variables
            noisy.apply([v.value.grad for v in variables], variables)
        else:
            optimizer.step()
        losses.append(float(loss.detach()))
    weights = [np.array(w) for w in model.get_weights()]
    return losses, weights


def _torch_rank(rank, port, directory):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        x, y = _data(n=16)
        shard = slice(8 * rank, 8 * (rank + 1))
        runs = {}
        for case in ("stochastic_depth", "stochastic_depth_row"):
            for rate in (0.0, 0.5):
                losses, weights = _torch_train(
                    case, rate, x[shard], y[shard], steps=12, ddp_rank=rank
                )
                runs[f"{case}/{rate}"] = {"losses": losses, "weights": weights}
        # GradientNoise after DDP's all-reduce: the same noise on each rank.
        losses, weights = _torch_train(
            "stochastic_depth", 0.0, x[shard], y[shard], 12, rank, noise=True
        )
        runs["stochastic_depth/0.0/noise"] = {
            "losses": losses,
            "weights": weights,
        }
        keras.utils.set_random_seed(5)
        decisions = _decisions(24, 8, 1)
        np.savez(
            os.path.join(directory, f"rank{rank}.npz"),
            runs=np.array(runs, dtype=object),
            decisions=np.array(decisions, dtype=object),
        )
    finally:
        dist.destroy_process_group()


def torch_ddp(directory=None):
    """Two gloo processes on this CPU, each with half of every batch."""
    import torch.multiprocessing as mp

    mp.spawn(_torch_rank, args=(_free_port(), directory), nprocs=2)
    ranks = [
        np.load(os.path.join(directory, f"rank{r}.npz"), allow_pickle=True)
        for r in range(2)
    ]
    runs = [r["runs"].item() for r in ranks]
    decisions = [r["decisions"].item() for r in ranks]
    x, y = _data(n=16)
    result = {"cases": {}, "decisions": decisions}
    for key in runs[0]:
        case, rate, *noise = key.split("/")
        losses, weights = _torch_train(
            case, float(rate), x, y, steps=12, noise=bool(noise)
        )
        result["cases"][key] = {
            "single_loss": losses,
            # The mean of the two ranks' losses is the full-batch loss.
            "ddp_loss": [
                (a + b) / 2
                for a, b in zip(runs[0][key]["losses"], runs[1][key]["losses"])
            ],
            "weight_diff": _max_diff(weights, runs[0][key]["weights"]),
            "rank_weight_diff": _max_diff(
                runs[0][key]["weights"], runs[1][key]["weights"]
            ),
        }
    return result


COMMANDS = {
    "jax_data_parallel": jax_data_parallel,
    "tf_mirrored": tf_mirrored,
    "torch_ddp": torch_ddp,
}

if __name__ == "__main__":
    serve(COMMANDS)
