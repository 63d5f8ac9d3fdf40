"""Shared plumbing of the optimizer wrappers: delegation and serialization."""

import keras
from keras import ops

from keras_regularize._validation import fail


def global_norm(grads):
    """The float32 L2 norm of a list of gradients, as one scalar tensor."""
    squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads]
    return ops.sqrt(ops.sum(ops.stack(squares)))


def _resolve_optimizer(optimizer):
    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = keras.optimizers.get(optimizer)
        except ValueError:
            fail(
                "optimizer",
                "a `keras.optimizers.Optimizer` instance or the name of one",
                optimizer,
            )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        fail("optimizer", "a `keras.optimizers.Optimizer` instance", optimizer)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        fail(
            "optimizer",
            "an optimizer that is not a `LossScaleOptimizer` (put loss "
            "scaling outermost: `LossScaleOptimizer(wrapper)`, which "
            '`compile()` does by itself under "mixed_float16")',
            optimizer,
        )
    return optimizer


class OptimizerWrapper(keras.optimizers.Optimizer):
    """Base of optimizers that transform gradients, then call another one.

    Works like `keras.optimizers.LossScaleOptimizer`: the wrapper owns a few
    variables of its own, builds the inner optimizer, delegates the learning
    rate and iteration count to it, and lists its own variables before the
    inner ones in `variables`, so stateless (JAX) training, `.keras` saving
    and `LossScaleOptimizer(wrapper)` all see one flat list. Subclasses
    implement `transform_gradients(grads, variables)`, which receives the
    unscaled float gradients that are not `None` and whose variables are not
    `overwrite_with_gradient`, and returns the gradients to hand on.

    A static `loss_scale_factor` set on the inner optimizer moves to the
    wrapper, so the transform sees unscaled gradients.
    """

    def __init__(self, optimizer, name=None):
        optimizer = _resolve_optimizer(optimizer)
        super().__init__(learning_rate=0.0, name=name)
        self.optimizer = optimizer
        self.loss_scale_factor = optimizer.loss_scale_factor
        optimizer.loss_scale_factor = None

    def _add_state(self, name, shape=(), dtype="float32", value=0.0):
        return self.add_variable(
            shape=shape,
            initializer=keras.initializers.Constant(value),
            dtype=dtype,
            aggregation="only_first_replica",
            name=name,
        )

    def build(self, var_list):
        if not self.optimizer.built:
            self.optimizer.build(var_list)
        super().build(var_list)

    @property
    def inner_optimizer(self):
        """The wrapped optimizer (the name `LossScaleOptimizer` uses)."""
        return self.optimizer

    @property
    def variables(self):
        return self._variables[:] + self.optimizer.variables

    @property
    def learning_rate(self):
        return self.optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.optimizer.iterations

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self.optimizer.exclude_from_weight_decay(
            var_list=var_list, var_names=var_names
        )

    def finalize_variable_values(self, var_list):
        self.optimizer.finalize_variable_values(var_list)

    def transform_gradients(self, grads, variables):
        raise NotImplementedError

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    f"`{self.__class__.__name__}.apply()` was called without "
                    "`trainable_variables` before the optimizer was built. "
                    "Call `optimizer.build(trainable_variables)` first."
                )
            variables = self._trainable_variables
        else:
            variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name):
                    self.build(variables)
                self.built = True
        if len(grads) != len(variables):
            raise ValueError(
                f"Received {len(grads)} gradients for {len(variables)} "
                "variables; they must match one to one."
            )
        scale = self.loss_scale_factor
        if scale is not None:
            grads = [None if g is None else g / scale for g in grads]
        active = [
            i
            for i, (g, v) in enumerate(zip(grads, variables))
            if g is not None
            and not getattr(v, "overwrite_with_gradient", False)
        ]
        if active:
            new = self.transform_gradients(
                [grads[i] for i in active], [variables[i] for i in active]
            )
            for i, g in zip(active, new):
                grads[i] = g
        self.optimizer.apply(grads, trainable_variables)

    def _inner_config(self):
        config = keras.saving.serialize_keras_object(self.optimizer)
        if self.loss_scale_factor is not None:
            config["config"]["loss_scale_factor"] = self.loss_scale_factor
        return config

    def get_config(self):
        # Not super().get_config(): the base keys (learning rate, clipping,
        # EMA, ...) belong to the inner optimizer.
        return {"name": self.name, "optimizer": self._inner_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(optimizer, **config)
