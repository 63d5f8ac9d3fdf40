"""Gaussian weight noise on the kernel of a wrapped layer, in training only.

Papers: Graves, Practical Variational Inference for Neural Networks (NeurIPS
2011); An, The Effects of Adding Noise During Backpropagation Training on a
Generalization Performance (Neural Computation, 1996).
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_number
from keras_regularize._validation import fail
from keras_regularize._variables import ScalarVariable
from keras_regularize.layers._seeded import add_seed_generator
from keras_regularize.layers._seeded import draw_seed


def check_stddev(name, value):
    return check_number(name, value, 0.0)


@export("keras_regularize.layers.WeightNoise")
class WeightNoise(keras.layers.Wrapper):
    """Adds Gaussian noise to a wrapped layer's kernel during training.

    In training, each call draws `noise ~ N(0, stddev**2)` of the kernel's
    shape and runs the wrapped layer with `kernel + noise` in place of its
    kernel; the kernel variable itself is never modified, and gradients
    reach it through the noisy copy. Biases and any other weights are used
    as they are. At inference the wrapped layer runs unchanged.

    Works with any layer that has a `kernel` variable (`Dense`,
    `EinsumDense`, `Conv*`, ...): the wrapped layer's own call runs, with
    its own dtype policy, activity regularizer and non-trainable updates.

    Args:
        layer: A `keras.layers.Layer` with a `kernel` variable (checked when
            the layer is built).
        stddev: Finite float >= 0. Standard deviation of the kernel noise
            (NaN and infinities are refused). It is
            held in a non-trainable variable, so `layer.stddev = 0.01` (e.g.
            from a callback annealing it) takes effect inside compiled
            training steps.
        seed: Optional non-negative int seeding the wrapper's
            `keras.random.SeedGenerator`. Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...). The output
            is cast to the wrapper's compute dtype.

    Call arguments:
        inputs: Inputs of the wrapped layer, of any dtype it takes. Only the
            kernel is perturbed (in its own float dtype), so integer inputs
            that the wrapped layer promotes, as `Dense` does, stay as valid
            as without the wrapper.
        training: Python bool. Noise is added only when `True`.

    Example:

    Wrap the layer whose kernel should be perturbed:

    >>> dense = keras.layers.Dense(3, kernel_initializer="ones")
    >>> layer = keras_regularize.layers.WeightNoise(dense, stddev=0.1, seed=0)
    >>> model = keras.Sequential([keras.Input((4,)), layer])
    >>> x = np.ones((1, 4), "float32")
    >>> keras.ops.convert_to_numpy(model(x))  # inference: the plain Dense
    array([[4., 4., 4.]], dtype=float32)
    >>> y = model(x, training=True)  # a new kernel perturbation per call
    >>> layer.stddev = 0.01  # e.g. annealed by a callback while training

    References:
        - [Graves, 2011](https://papers.nips.cc/paper/4329)
        - [An, 1996](https://doi.org/10.1162/neco.1996.8.3.643)
    """

    def __init__(self, layer, stddev, seed=None, **kwargs):
        # Read variables in their stored dtype; the wrapped layer autocasts
        # them itself when it runs.
        kwargs["autocast"] = False
        if not isinstance(layer, keras.layers.Layer):
            fail("layer", "a Keras layer with a `kernel`", layer)
        check_stddev("stddev", stddev)
        super().__init__(layer, **kwargs)
        # A variable, so a callback may anneal it inside compiled steps.
        self.stddev = stddev
        add_seed_generator(self, seed)
        if self.layer.built:
            self._kernel()

    stddev = ScalarVariable(
        check_stddev, "The current noise standard deviation, a Python float."
    )

    def _kernel(self):
        kernel = getattr(self.layer, "kernel", None)
        if not isinstance(kernel, keras.Variable):
            names = [w.name for w in self.layer.weights]
            fail(
                "layer",
                f"a layer with a `kernel` variable (its weights: {names})",
                self.layer,
            )
        return kernel

    def build(self, input_shape=None):
        super().build(input_shape)
        self._kernel()
        self.built = True

    def call(self, inputs, training=None):
        if training:
            outputs = self._noisy_call(inputs, training)
        else:
            outputs = self.layer(inputs, training=training)
        return keras.tree.map_structure(
            lambda t: ops.cast(t, self.compute_dtype), outputs
        )

    def _noisy_call(self, inputs, training):
        kernel = self._kernel()
        # Read before the scope below, which maps only the wrapped layer's
        # variables.
        stddev = ops.cast(self.stddev_variable, kernel.dtype)
        noise = stddev * keras.random.normal(
            kernel.shape, dtype=kernel.dtype, seed=draw_seed(self)
        )
        # Every variable of the wrapped layer is mapped (not only the
        # kernel): a scope does not fall back to an enclosing one, such as
        # the one JAX training steps run in.
        mapping = [
            (v, ops.add(v.value, noise) if v is kernel else v.value)
            for v in self.layer.variables
        ]
        with keras.StatelessScope(mapping, collect_losses=True) as scope:
            outputs = self.layer(inputs, training=training)
        for v in self.layer.non_trainable_variables:
            value = scope.get_current_value(v)
            if value is not None:
                v.assign(value)
        for loss in scope.losses:
            self.layer.add_loss(loss)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # keras.layers.Wrapper.from_config pops "layer" from the caller's
        # dict; work on a copy.
        return super().from_config(dict(config), custom_objects)

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        return {**config, "stddev": self.stddev, "seed": self.seed}
