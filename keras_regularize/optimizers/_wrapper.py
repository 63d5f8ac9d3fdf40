"""Shared plumbing of the optimizer wrappers: delegation and serialization."""

import keras
from keras import ops

from keras_regularize._validation import check_int
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

    Gradient accumulation lives on the innermost optimizer (the one that
    is not a wrapper): its accumulators, its `iterations` (applied
    updates) and its decision of which call updates the weights.
    `wrapper.gradient_accumulation_steps` reads and sets that one, so the
    user may set it on either (before the optimizer is built); a wrapper
    and an inner optimizer given different values raise a `ValueError`.
    With accumulation, the transform runs once per applied update, on the
    mean of the `k` accumulated gradients as Keras forms it (right where
    Keras applies its own `clipnorm`/`global_clipnorm`, and before them),
    and the wrapper's own variables (statistics, RNG state) change only on
    those calls.
    """

    def __init__(self, optimizer, name=None):
        optimizer = _resolve_optimizer(optimizer)
        super().__init__(learning_rate=0.0, name=name)
        self.optimizer = optimizer
        self._wrapping = optimizer
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

    def _base(self):
        """The innermost optimizer (the one that accumulates)."""
        optimizer = self.optimizer
        while isinstance(optimizer, OptimizerWrapper):
            optimizer = optimizer.optimizer
        return optimizer

    @property
    def gradient_accumulation_steps(self):
        """The innermost optimizer's `gradient_accumulation_steps`."""
        if self.__dict__.get("_wrapping") is None:
            return None
        return self._base().gradient_accumulation_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value):
        if self.__dict__.get("_wrapping") is None:
            # `Optimizer.__init__` of the wrapper itself sets `None`.
            if value is not None:
                fail("gradient_accumulation_steps", "None here", value)
            return
        if value is not None:
            value = check_int("gradient_accumulation_steps", value, low=2)
        base = self._base()
        current = base.gradient_accumulation_steps
        if value == current:
            return
        if current is not None and value is not None:
            raise ValueError(
                f"`gradient_accumulation_steps` is set on both the wrapper "
                f"{self.name!r} ({value}) and the inner optimizer "
                f"{base.name!r} ({current}) with different values; "
                "accumulation happens once, on the inner optimizer: set it "
                f"on one of them. Received: gradient_accumulation_steps={value}"
            )
        if base.built or self.built:
            fail(
                "gradient_accumulation_steps",
                "to be set before the optimizer is built (before the first "
                "`fit` or `apply`)",
                value,
            )
        base.gradient_accumulation_steps = value

    def _hook_accumulation(self, variables):
        """Makes the base optimizer run the transforms on the mean.

        Only the outermost wrapper of a chain hooks; inner wrappers then
        pass gradients through (`_deferred`).
        """
        base = self._base()
        chain = []
        optimizer = self
        while isinstance(optimizer, OptimizerWrapper):
            chain.append(optimizer)
            optimizer = optimizer.optimizer
        original = type(base)._clip_gradients.__get__(base)
        steps = base.gradient_accumulation_steps

        def clip_gradients(grads):
            is_update = ops.equal(
                ops.mod(ops.add(base._iterations, 1), steps), 0
            )
            grads = list(grads)
            for wrapper in chain:
                grads = wrapper._gated_transform(grads, variables, is_update)
            return original(grads)

        base.__dict__["_clip_gradients"] = clip_gradients

    def _gated_transform(self, grads, variables, is_update):
        own = list(self._variables)
        before = [ops.copy(v.value) for v in own]
        new = self.transform_gradients(grads, variables)
        # On JAX the base optimizer runs this on every call and discards
        # the result of the calls that do not update; keep the wrapper's
        # state as it was on those.
        for v, old in zip(own, before):
            v.assign(ops.where(is_update, v.value, old))
        return list(new)

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
        if self.gradient_accumulation_steps:
            if getattr(self, "_deferred", False):
                # An outer wrapper runs this one's transform on the mean.
                self.optimizer.apply(grads, trainable_variables)
                return
            self._apply_accumulated(grads, variables, trainable_variables)
            return
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

    def _apply_accumulated(self, grads, variables, trainable_variables):
        base = self._base()
        kept = [
            v
            for g, v in zip(grads, variables)
            if g is not None
            and not getattr(v, "overwrite_with_gradient", False)
        ]
        inner = []
        optimizer = self.optimizer
        while isinstance(optimizer, OptimizerWrapper):
            inner.append(optimizer)
            optimizer = optimizer.optimizer
        self._hook_accumulation(kept)
        for wrapper in inner:
            wrapper._deferred = True
        try:
            self.optimizer.apply(grads, trainable_variables)
        finally:
            for wrapper in inner:
                wrapper._deferred = False
            base.__dict__.pop("_clip_gradients", None)

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
