"""Annealed Gaussian gradient noise around any Keras optimizer.

Papers: Adding Gradient Noise Improves Learning for Very Deep Networks
(https://arxiv.org/abs/1511.06807).
"""

import keras
from keras import ops

from keras_regularize._export import export
from keras_regularize._validation import check_nonnegative
from keras_regularize._validation import check_number
from keras_regularize._validation import check_seed
from keras_regularize._variables import ScalarVariable
from keras_regularize.optimizers._wrapper import OptimizerWrapper


@export("keras_regularize.optimizers.GradientNoise")
class GradientNoise(OptimizerWrapper):
    """Adds annealed Gaussian noise to the gradients, then calls an optimizer.

    At step `t` (the wrapped optimizer's `iterations`, counted from 0), every
    gradient `g` becomes `g + n` with `n ~ N(0, eta / (1 + t) ** gamma)`,
    drawn independently per element from the wrapper's own
    `keras.random.SeedGenerator`. The noised gradients then go to the wrapped
    optimizer, which applies its own clipping, weight decay and update rule.
    With `eta=0` training is exactly that of the wrapped optimizer. With
    gradient accumulation (`gradient_accumulation_steps=k` on the inner
    optimizer or the wrapper) the noise is added once per applied update,
    to the mean of the `k` accumulated gradients, and `t` counts updates.

    The wrapper works like `keras.optimizers.LossScaleOptimizer`: learning
    rate and `iterations` are the wrapped optimizer's, the wrapper's
    variables (noise scale and RNG state) come first in `variables`, and it
    saves to `.keras` with its inner optimizer. Under `"mixed_float16"`,
    `compile()` wraps it in a `LossScaleOptimizer`, which unscales gradients
    before the noise is added. `eta` is held in a non-trainable variable:
    `optimizer.eta = 0.0` from a callback takes effect in compiled steps.

    Args:
        optimizer: The `keras.optimizers.Optimizer` to wrap (or a name or
            config understood by `keras.optimizers.get`).
        eta: Float >= 0. Noise variance at step 0. Defaults to `0.01`.
        gamma: Float >= 0. Annealing exponent. Defaults to `0.55`.
        seed: Optional non-negative int seeding the noise. Defaults to
            `None`.
        name: Optional name of the wrapper.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> opt = keras_regularize.optimizers.GradientNoise(
    ...     keras.optimizers.SGD(0.01), eta=0.3, gamma=0.55, seed=0)
    >>> model.compile(optimizer=opt, loss="mse")
    >>> round(float(opt.noise_stddev()), 4)  # sqrt(eta) at step 0
    0.5477
    >>> x, y = np.ones((32, 4)), np.ones((32, 1))
    >>> history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    >>> int(opt.iterations), round(float(opt.noise_stddev()), 4)
    (4, 0.3518)

    After 4 steps the variance has annealed to `0.3 / 5 ** 0.55`. A callback
    may set `opt.eta = 0.0` to switch the noise off from then on.

    References:
        - [Neelakantan et al., 2015](https://arxiv.org/abs/1511.06807)
    """

    def __init__(self, optimizer, eta=0.01, gamma=0.55, seed=None, name=None):
        check_nonnegative("eta", eta)
        gamma = check_number("gamma", gamma, low=0.0)
        seed = check_seed("seed", seed)
        super().__init__(optimizer, name=name)
        self.gamma = gamma
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Listed among the optimizer variables, so stateless (JAX) steps
        # carry the RNG state and `.keras` files restore it.
        self._track_variable(self.seed_generator.state)
        self.eta = eta

    eta = ScalarVariable(
        check_nonnegative, "The noise variance at step 0, as a Python float."
    )

    def noise_stddev(self):
        """The standard deviation of the noise at the current step."""
        step = ops.cast(self.iterations, "float32")
        variance = ops.divide(
            ops.convert_to_tensor(self.eta_variable, "float32"),
            ops.power(1.0 + step, self.gamma),
        )
        return ops.sqrt(variance)

    def transform_gradients(self, grads, variables):
        stddev = self.noise_stddev()
        noised = []
        for g in grads:
            noise = keras.random.normal(
                tuple(g.shape), dtype=g.dtype, seed=self.seed_generator
            )
            noised.append(g + ops.cast(stddev, g.dtype) * noise)
        return noised

    def get_config(self):
        return {
            **super().get_config(),
            "eta": self.eta,
            "gamma": self.gamma,
            "seed": self.seed,
        }
