"""Sharpness-aware minimization (SAM and ASAM) as a model wrapper.

Papers: Sharpness-Aware Minimization for Efficiently Improving Generalization
(https://arxiv.org/abs/2010.01412); ASAM: Adaptive Sharpness-Aware
Minimization for Scale-Invariant Learning of Deep Neural Networks
(https://arxiv.org/abs/2102.11600); Towards Efficient and Scalable
Sharpness-Aware Minimization (https://arxiv.org/abs/2203.02714), for the
perturbation every k steps.
"""

import inspect
import warnings

import keras
from keras import ops

from keras_regularize._backend import replicas_in_sync
from keras_regularize._backend import value_and_grad
from keras_regularize._export import export
from keras_regularize._validation import check_bool
from keras_regularize._validation import check_int
from keras_regularize._validation import check_nonnegative
from keras_regularize._validation import fail
from keras_regularize._variables import ScalarVariable
from keras_regularize.models._train_protocol import prepare_train_batch
from keras_regularize.optimizers._wrapper import global_norm

# Below this gradient norm the perturbation is zero rather than 0 / 0.
_TINY = 1e-12


def _batch_size(x):
    leaf = next(t for t in keras.tree.flatten(x) if t is not None)
    return ops.shape(leaf)[0]


@export("keras_regularize.models.SharpnessAwareMinimization")
class SharpnessAwareMinimization(keras.Model):
    """Trains `model` with sharpness-aware minimization (SAM or ASAM).

    Each training step computes the gradient `g` of the loss at the weights
    `w`, moves to `w + e` with

        e = rho * g / ||g||                 (SAM)
        e = rho * T^2 g / ||T g||,  T = |w| + eta   (ASAM, `adaptive=True`)

    (`||.||` is the global norm over all trainable weights, biases
    included), computes the gradient `g'` of the loss at `w + e` on the same
    batch and lets the optimizer apply `g'` to the unchanged `w`. The
    weights are never moved: the second pass reads `w + e` as tensors, so
    `w` is restored exactly. With `rho=0`, training equals plain training.

    - The second pass starts from the same non-trainable state as the
      first: batch-norm statistics and every other non-trainable update
      come from the first pass only, and seeded random layers (dropout,
      the mixing of a `MixingModel`) draw the same values in both passes.
    - With `every=k`, steps `0, k, 2k, ...` are SAM steps and the others
      plain optimizer steps; the cost falls toward `(1 + 1/k)` plain steps.
    - Under a `LossScaleOptimizer` (`mixed_float16`), the first gradient is
      unscaled before its norm is taken; a step whose first or second
      gradient is not finite reaches the optimizer as non-finite, so it
      skips the step and lowers the loss scale.
    - The optimizer sees `g'` only: `GradientClipping` or `GradientNoise`
      as the optimizer act on the final gradient.
    - Wrapping a `MixingModel` or a `Distiller` works: the loss and metrics
      are the wrapped model's own (`compile` compiles both with the same
      arguments and optimizer), the teachers of a `Distiller` run once per
      step. Under `tf.distribute`, each replica perturbs with its own
      gradient (m-sharpness with `m` the per-replica batch); under JAX
      `DataParallel`, the step is one program over the global batch.

    The logs are those of the first pass (the loss at `w`), named as the
    wrapped model names them. `evaluate` is the wrapped model's own;
    `predict` and `sam(x)` call the wrapped model. `rho` and `eta` live in
    non-trainable variables, so a callback may change them during `fit`.

    Args:
        model: The `keras.Model` to train (a plain model, a `MixingModel`,
            a `Distiller`, ...).
        rho: Float >= 0. Radius of the perturbation. Defaults to `0.05`
            (ASAM's authors use larger values, e.g. `0.5` to `2.0`).
        adaptive: Bool. Whether to use ASAM's scale-invariant perturbation.
            Defaults to `False`.
        eta: Float >= 0. ASAM's offset in `T = |w| + eta`; unused by SAM.
            Defaults to `0.01`.
        every: Int >= 1. Perturb every `every` steps; plain steps in
            between. Defaults to `1`.
        **kwargs: Base model arguments (`name`, ...).

    Example:

    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> y = x.sum(axis=1, keepdims=True)
    >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model = keras_regularize.models.SharpnessAwareMinimization(
    ...     inner, rho=0.05)
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    >>> model.predict(x[:2], verbose=0).shape
    (2, 1)

    References:
        - [Foret et al., 2021](https://arxiv.org/abs/2010.01412)
        - [Kwon et al., 2021](https://arxiv.org/abs/2102.11600)
        - [Liu et al., 2022](https://arxiv.org/abs/2203.02714)
    """

    def __init__(
        self, model, rho=0.05, adaptive=False, eta=0.01, every=1, **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            fail("model", "a Keras model (a `keras.Model`)", model)
        adaptive = check_bool("adaptive", adaptive)
        every = check_int("every", every, low=1)
        check_nonnegative("rho", rho)
        check_nonnegative("eta", eta)
        self.model = model
        self.adaptive = adaptive
        self.every = every
        self.rho = rho
        self.eta = eta
        # Steps since the last SAM step, modulo `every`: a variable, so a
        # compiled step reads it.
        self.step_counter = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="step_counter",
        )
        self._loss_has_training_arg = (
            "training" in inspect.signature(model.compute_loss).parameters
        )
        if model.built:
            self.built = True

    rho = ScalarVariable(check_nonnegative, "The perturbation radius, a float.")
    eta = ScalarVariable(check_nonnegative, "ASAM's offset of `|w|`, a float.")

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    # -- compile, loss and metrics: the wrapped model's ---------------------

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile="auto",
        auto_scale_loss=True,
    ):
        common = dict(
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
        )
        super().compile(
            optimizer=optimizer, auto_scale_loss=auto_scale_loss, **common
        )
        # The wrapped model keeps its own loss and metrics logic (a
        # MixingModel's two-term loss, a Distiller's trackers); it shares
        # the optimizer, which only this wrapper applies.
        self.model.compile(
            optimizer=self.optimizer, auto_scale_loss=False, **common
        )

    def compile_from_config(self, config):
        # Keras skips models that override `compile`; this one only adds
        # the wrapped model's compile, so the saved config applies as is.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return self.model.metrics

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if self._loss_has_training_arg:
            return self.model.compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
        return self.model.compute_loss(x, y, y_pred, sample_weight)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.model.compute_metrics(x, y, y_pred, sample_weight)

    def get_metrics_result(self):
        return self.model.get_metrics_result()

    def evaluate(self, *args, **kwargs):
        kwargs.pop("_use_cached_eval_dataset", None)
        return self.model.evaluate(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        return self.model.test_on_batch(*args, **kwargs)

    def _loss_tracker_of_model(self):
        # Keras lists a compiled model's loss tracker first in `metrics`.
        tracker = self.model.metrics[0]
        if tracker.name != "loss":
            raise RuntimeError(
                "SharpnessAwareMinimization could not find the wrapped "
                f"model's loss tracker (found {tracker.name!r})."
            )
        return tracker

    # -- the training step -------------------------------------------------

    def train_step(self, *args):
        if len(args) == 2:
            # A stateless trainer (JAX): `(state, data) -> (logs, state)`.
            return self._stateless_train_step(*args)
        return self._stateful_train_step(args[0])

    def _stateless_train_step(self, state, data):
        trainable, non_trainable, optimizer_values, metrics_values = state
        grads, non_trainable, metrics_values, logs = self._step(
            trainable, non_trainable, metrics_values, optimizer_values, data
        )
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, grads, trainable
        )
        return logs, (
            trainable,
            non_trainable,
            optimizer_values,
            metrics_values,
        )

    def _stateful_train_step(self, data):
        # Metrics stay in their variables here (TensorFlow builds compiled
        # metrics inside the first traced step); only the passes' own
        # metric updates (a Distiller's trackers) come back from the scope.
        non_trainable_before = _read(self.non_trainable_variables)
        grads, non_trainable, metrics_values, logs = self._step(
            _read(self.trainable_variables),
            non_trainable_before,
            None,
            None,
            data,
        )
        _assign_changed(
            self.non_trainable_variables, non_trainable_before, non_trainable
        )
        if self.trainable_variables:
            self.optimizer.apply(grads, self.trainable_variables)
        return logs

    def _step(self, trainable, non_trainable, metrics_values, opt_values, data):
        """One step on tensors: `(grads, non_trainable, metrics, logs)`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        own = {id(v): i for i, v in enumerate(self.non_trainable_variables)}

        def own_value(variable):
            return non_trainable[own[id(variable)]]

        if not self.trainable_variables:
            warnings.warn(
                "The model does not have any trainable weights.", stacklevel=2
            )
        # Teacher outputs and the like: once per step, from the state
        # before the step.
        x, y, sample_weight = self._prepare(
            trainable, non_trainable, x, y, sample_weight
        )
        grad_fn = value_and_grad(self._pass)
        batch = (non_trainable, metrics_values, opt_values, x, y, sample_weight)
        (_, aux), grads = grad_fn(trainable, *batch)
        loss, y_pred, first_non_trainable, first_metrics, scale = aux

        def perturbed():
            unscaled = [g / ops.cast(scale, g.dtype) for g in grads]
            finite = ops.all(
                ops.stack([ops.all(ops.isfinite(g)) for g in unscaled])
            )
            shifted = self._perturb(
                trainable,
                unscaled,
                own_value(self.rho_variable),
                own_value(self.eta_variable),
            )
            # The second pass starts from the state before the step: the
            # same random draws, and its own updates are dropped.
            _, second = grad_fn(shifted, *batch)
            poison = ops.where(finite, 0.0, float("nan"))
            return [g + ops.cast(poison, g.dtype) for g in second]

        counter = own_value(self.step_counter)
        if self.every == 1:
            final = perturbed()
        else:
            final = ops.cond(
                ops.equal(counter, 0), perturbed, lambda: list(grads)
            )
            first_non_trainable = list(first_non_trainable)
            first_non_trainable[own[id(self.step_counter)]] = ops.mod(
                counter + 1, self.every
            )
        logs, metrics_values = self._update_metrics(
            metrics_values is None,
            first_metrics,
            loss,
            x,
            y,
            y_pred,
            sample_weight,
        )
        return final, first_non_trainable, metrics_values, logs

    def _mapping(self, trainable, non_trainable, metrics_values, opt_values):
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += zip(self.non_trainable_variables, non_trainable)
        if metrics_values is not None:
            mapping += zip(self.metrics_variables, metrics_values)
        if opt_values is not None:
            mapping += zip(self.optimizer.variables, opt_values)
        return mapping

    def _prepare(self, trainable, non_trainable, x, y, sample_weight):
        mapping = self._mapping(trainable, non_trainable, None, None)
        with keras.StatelessScope(state_mapping=mapping):
            return prepare_train_batch(self.model, x, y, sample_weight)

    def _pass(
        self,
        trainable,
        non_trainable,
        metrics_values,
        opt_values,
        x,
        y,
        sample_weight,
    ):
        """The loss at `trainable`, scaled for the optimizer, and aux."""
        mapping = self._mapping(
            trainable, non_trainable, metrics_values, opt_values
        )
        with keras.StatelessScope(
            state_mapping=mapping, collect_losses=True
        ) as scope:
            entry = _current(scope, self.non_trainable_variables)
            entry_metrics = (
                None
                if metrics_values is None
                else _current(scope, self.metrics_variables)
            )
            y_pred = self.model(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss)
            scale = ops.convert_to_tensor(
                self.optimizer.scale_loss(ops.ones((), "float32")), "float32"
            )
        new_non_trainable = _updates(
            scope, self.non_trainable_variables, entry, non_trainable
        )
        if metrics_values is None:
            # Stateful trainers: the updates the pass made, by variable.
            new_metrics = [
                (v, scope.get_current_value(v)) for v in self.metrics_variables
            ]
            new_metrics = [(v, t) for v, t in new_metrics if t is not None]
        else:
            new_metrics = _updates(
                scope, self.metrics_variables, entry_metrics, metrics_values
            )
        return scaled, (loss, y_pred, new_non_trainable, new_metrics, scale)

    def _perturb(self, weights, grads, rho, eta):
        """`w + e`, with SAM's or ASAM's `e`."""
        rho = ops.cast(rho, "float32")
        if self.adaptive:
            eta = ops.cast(eta, "float32")
            t = [ops.abs(ops.cast(w, "float32")) + eta for w in weights]
            norm = global_norm([ti * g for ti, g in zip(t, grads)])
            factor = rho / ops.maximum(norm, _TINY)
            steps = [ti * ti * g * factor for ti, g in zip(t, grads)]
        else:
            factor = rho / ops.maximum(global_norm(grads), _TINY)
            steps = [g * factor for g in grads]
        return [w + ops.cast(e, w.dtype) for w, e in zip(weights, steps)]

    def _update_metrics(self, stateful, metrics_values, loss, x, y, y_pred, sw):
        if stateful:
            # Stateful trainers: write the first pass's updates, then
            # update the metrics in place.
            for variable, value in metrics_values:
                variable.assign(value)
            self._loss_tracker_of_model().update_state(
                ops.cast(loss, "float32") * replicas_in_sync(),
                sample_weight=_batch_size(x),
            )
            return self.compute_metrics(x, y, y_pred, sample_weight=sw), None
        mapping = list(zip(self.metrics_variables, metrics_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            entry = _current(scope, self.metrics_variables)
            self._loss_tracker_of_model().update_state(
                ops.cast(loss, "float32") * replicas_in_sync(),
                sample_weight=_batch_size(x),
            )
            logs = self.compute_metrics(x, y, y_pred, sample_weight=sw)
        new = _updates(scope, self.metrics_variables, entry, metrics_values)
        return logs, new

    # -- serialization -----------------------------------------------------

    def get_config(self):
        model = keras.saving.serialize_keras_object(self.model)
        # The wrapper's own compile config is the one that counts.
        model.pop("compile_config", None)
        return {
            **super().get_config(),
            "model": model,
            "rho": self.rho,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "every": self.every,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model=model, **config)


def _read(variables):
    return [ops.convert_to_tensor(v.value) for v in variables]


def _current(scope, variables):
    return [scope.get_current_value(v) for v in variables]


def _updates(scope, variables, entry, values):
    """The scope's values of `variables`; the very tensors of `values`
    where the scope left a variable untouched (so a stateful step writes
    back only what changed)."""
    return [
        value if new is old else new
        for new, old, value in zip(_current(scope, variables), entry, values)
    ]


def _assign_changed(variables, before, after):
    """Writes back the values a scope changed (identity: unchanged ones
    come back as the very tensors that went in)."""
    for variable, old, new in zip(variables, before, after):
        if new is not None and new is not old:
            variable.assign(new)
