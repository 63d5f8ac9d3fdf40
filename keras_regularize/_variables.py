"""Hyperparameters held in non-trainable float32 scalar variables.

A compiled training step reads a variable, so a callback that assigns a new
value changes training at once, where a Python float would have been frozen
into the compiled graph. `ScalarVariable` is the one mechanism for this: a
class attribute that validates what is set, keeps the variable and a host
mirror of its value (so `get_config` needs no device read) in step.
"""

import keras


def add_scalar(owner, name, value):
    """Creates the non-trainable float32 scalar `name` on a layer/optimizer.

    Layers (models included) get a weight, optimizers an optimizer variable
    that only the first replica aggregates. `autocast=False` keeps a layer's
    copy float32 under mixed precision.
    """
    initializer = keras.initializers.Constant(value)
    if isinstance(owner, keras.optimizers.Optimizer):
        return owner.add_variable(
            shape=(),
            initializer=initializer,
            dtype="float32",
            aggregation="only_first_replica",
            name=name,
        )
    return owner.add_weight(
        shape=(),
        initializer=initializer,
        trainable=False,
        dtype="float32",
        autocast=False,
        name=name,
    )


class ScalarVariable:
    """A float hyperparameter that compiled steps read from a variable.

    Declared once on the class, e.g. `rate = ScalarVariable(check_rate)`.
    Then, on an instance:

    - `obj.rate = v` checks `v` with `check("rate", v)`. The first
      assignment creates the variable `obj.rate_variable` (so constructors
      decide the variable order that `.keras` files rely on); later ones
      `.assign` the checked value to it.
    - `obj.rate` is the checked value as a Python float (the host mirror).
    - When `check` returns `None` (a hyperparameter that is switched off),
      the mirror reads `None` and the variable keeps its value, or is
      created holding `unset`.
    - An owner that defines `_scalar_assigned(name, value)` hears of every
      change, e.g. to update a copy that a tf.data graph reads.

    Reading an attribute that was never set raises `AttributeError`, like
    any missing attribute. TensorFlow's attribute tracking skips
    `self.x = value` when `getattr(self, "x") is value`, so a `None`
    default here would let `x = None` past the check.

    Args:
        check: Callable `check(name, value)` returning the value to store
            (a float, or `None`), or raising `ValueError`.
        doc: Docstring of the attribute.
        unset: Value a variable is created with when `check` returns `None`.
        bind: If `True`, `check` is called as `check(obj, name, value)`, for
            checks that depend on other settings of the owner.
    """

    def __init__(self, check, doc=None, unset=0.0, bind=False):
        self.check = check
        self.unset = unset
        self.bind = bind
        self.__doc__ = doc

    def __set_name__(self, owner, name):
        self.name = name
        self.variable_name = f"{name}_variable"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        values = obj.__dict__.get("_scalar_values", {})
        if self.name not in values:
            raise AttributeError(self.name)
        return values[self.name]

    def __set__(self, obj, value):
        if self.bind:
            value = self.check(obj, self.name, value)
        else:
            value = self.check(self.name, value)
        variable = obj.__dict__.get("_scalar_variables", {}).get(self.name)
        if variable is None:
            initial = self.unset if value is None else value
            variable = add_scalar(obj, self.name, initial)
            # Set through the owner, so Keras tracks the variable as an
            # attribute the way it tracks any other.
            setattr(obj, self.variable_name, variable)
            obj.__dict__.setdefault("_scalar_variables", {})[self.name] = (
                variable
            )
        elif value is not None:
            variable.assign(value)
        obj.__dict__.setdefault("_scalar_values", {})[self.name] = value
        hook = getattr(obj, "_scalar_assigned", None)
        if hook is not None:
            hook(self.name, value)


def read_scalar(obj, name, dtype="float32"):
    """The variable behind `ScalarVariable` `name` as a tensor of `dtype`."""
    variable = obj.__dict__["_scalar_variables"][name]
    return keras.ops.cast(keras.ops.convert_to_tensor(variable), dtype)
