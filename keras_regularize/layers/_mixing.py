"""Shared maths of the mixing layers: Beta draws, partners, boxes, labels.

Papers: mixup (https://arxiv.org/abs/1710.09412); CutMix
(https://arxiv.org/abs/1905.04899). Gamma sampling: Marsaglia and Tsang,
"A Simple Method for Generating Gamma Variables" (ACM TOMS, 2000).

Every function takes `xp`, a small namespace of array operations and seeded
random draws. `KerasOps` implements it with `keras.ops`/`keras.random` (the
normal path, eager or inside any jit); `keras_regularize._backend` implements
it with TensorFlow for `tf.data` pipelines run under another Keras backend.
"""

import keras
from keras import ops

from keras_regularize import _backend
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_int
from keras_regularize._validation import check_number
from keras_regularize._validation import check_rate
from keras_regularize._validation import check_seed
from keras_regularize._validation import fail
from keras_regularize._value_checks import require
from keras_regularize._variables import ScalarVariable

MODES = ("batch", "pair", "elem")

# Marsaglia-Tsang accepts a candidate with probability >= 0.95 for shape >= 1,
# so eight unrolled rounds leave a draw unaccepted with probability < 1e-10
# (it then takes the last candidate). A fixed count keeps the graph static,
# which is what lets the sampler compile under XLA, jax.jit and torch.
GAMMA_ROUNDS = 8


class KerasOps:
    """The operations the mixing maths needs, on the active Keras backend."""

    def __init__(self, seed_generator):
        self.seed_generator = seed_generator

    shape = staticmethod(ops.shape)
    cast = staticmethod(ops.cast)
    convert = staticmethod(ops.convert_to_tensor)
    argsort = staticmethod(ops.argsort)
    where = staticmethod(ops.where)
    reshape = staticmethod(ops.reshape)
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

    argmax = staticmethod(ops.argmax)
    take_along_axis = staticmethod(ops.take_along_axis)

    @staticmethod
    def arange(n):
        return ops.arange(n, dtype="int32")

    @staticmethod
    def take(x, indices):
        return ops.take(x, indices, axis=0)

    @staticmethod
    def one_hot(ids, num_classes):
        return ops.one_hot(ids, num_classes, dtype="float32")

    @staticmethod
    def ones(shape):
        return ops.ones(shape, dtype="float32")

    @staticmethod
    def dtype(x):
        return keras.backend.standardize_dtype(x.dtype)

    @staticmethod
    def value(variable):
        return ops.convert_to_tensor(variable, dtype="float32")

    @staticmethod
    def blend(x, x_partner, w):
        """`w * x + (1 - w) * x_partner`, exact for `w` in `{0, 1}`."""
        return _backend.blend(x, x_partner, w)

    @staticmethod
    def require(valid, values, name, expected, guard=None):
        """Raises for the first value where `valid` is False, if it can.

        Concrete (eager) tensors are checked on the host and raise
        `ValueError`; TensorFlow graphs get an assertion (TensorFlow raises
        `InvalidArgumentError` with the same message) that `guard`, returned,
        waits for. Traced JAX or XLA code cannot raise on data: the callers
        make such values NaN.
        """
        return require(valid, values, name, expected, guard)

    def uniform(self, shape):
        return keras.random.uniform(
            shape, dtype="float32", seed=self.seed_generator
        )

    def normal(self, shape):
        return keras.random.normal(
            shape, dtype="float32", seed=self.seed_generator
        )


def log_gamma(xp, alpha, shape):
    """`log` of Gamma(`alpha`, 1) draws of the given shape, for `alpha > 0`.

    Marsaglia-Tsang draws Gamma(alpha + 1) with a fixed number of rejection
    rounds; multiplying by `U ** (1 / alpha)` brings it down to Gamma(alpha),
    which is done in log space so small alphas neither underflow nor give
    `0 / 0` in the Beta ratio.
    """
    shape = tuple(shape)
    d = alpha + (1.0 - 1.0 / 3.0)
    c = 1.0 / xp.sqrt(9.0 * d)
    z = xp.normal((GAMMA_ROUNDS,) + shape)
    u = xp.uniform((GAMMA_ROUNDS,) + shape)
    v = 1.0 + c * z
    v = v * v * v
    positive = v > 0.0
    v = xp.where(positive, v, 1.0)
    log_v = xp.log(v)
    # log(0) = -inf accepts, as the (measure-zero) u = 0 should.
    bound = 0.5 * z * z + d - d * v + d * log_v
    accepted = xp.logical_and(positive, xp.log(u) < bound)
    # The first accepted round (round 0 in the < 1e-10 case of none).
    first = xp.argmax(xp.cast(accepted, "int32"), axis=0)
    chosen = xp.take_along_axis(log_v, first[None], axis=0)[0]
    # 1 - U lies in (0, 1], so its log is finite.
    boost = xp.log(1.0 - xp.uniform(shape)) / alpha
    return xp.log(d) + chosen + boost


def sample_beta(xp, alpha, n):
    """`n` draws of Beta(`alpha`, `alpha`) as float32, XLA-compilable."""
    g = log_gamma(xp, alpha, (2, n))
    return xp.sigmoid(g[0] - g[1])


def make_partners(xp, batch, mode):
    """Each sample's partner index, never itself when the batch has two.

    Modes `"batch"` and `"elem"` use one random cycle through the whole
    batch (a derangement: every sample is mixed with another one, each
    partner uniform over the other `B - 1`). `mode="pair"` uses a random
    involution instead (samples matched in pairs, an odd one out partnered
    with itself), so a pair can share its lambda and box. A batch of one is
    its own partner; an empty batch gives an empty index.
    """
    order = xp.cast(xp.argsort(xp.uniform((batch,))), "int32")
    index = xp.arange(batch)
    if mode != "pair":
        # partner[order[k]] = order[k + 1]: the cycle order[0] -> order[1]
        # -> ... -> order[B - 1] -> order[0]. The modulus is kept >= 1 so
        # an empty batch divides by nothing.
        following = xp.take(order, (index + 1) % xp.maximum(batch, 1))
        rank = xp.cast(xp.argsort(order), "int32")
        return xp.take(following, rank)
    buddy = xp.where(index % 2 == 0, index + 1, index - 1)
    buddy = xp.where(buddy >= batch, index, buddy)
    rank = xp.cast(xp.argsort(order), "int32")
    return xp.take(order, xp.take(buddy, rank))


def spatial_axes(rank, data_format):
    """The axes a CutMix box spans for an input of `rank`."""
    if data_format == "channels_first":
        return tuple(range(2, rank))
    return tuple(range(1, rank - 1))


def _per_draw(x, rank):
    """Reshapes per-draw values `(n,)` to broadcast against a rank-`rank` x."""
    return (-1,) + (1,) * (rank - 1)


def cut_boxes(xp, x, lam, active, axes, minmax, per_pair=None):
    """Draws CutMix boxes; returns the paste mask and the pasted fraction.

    Without `minmax`, each side is `(1 - lam) ** (1 / len(axes))` of the
    extent, the centre is uniform over the input and the box is clipped at
    the borders (as in the CutMix paper). With `minmax=(lo, hi)`, each side
    ratio is uniform in `[lo, hi)` and the box lies inside the input. The
    fraction is exact: the count of pasted elements over the total.
    `per_pair` maps per-draw values to per-pair ones in `mode="pair"`.
    """
    if per_pair is None:

        def per_pair(values):
            return values

    rank = len(x.shape)
    dims = xp.shape(x)
    n = xp.shape(lam)[0]
    u = per_pair(xp.uniform((n, len(axes))))
    if minmax is None:
        ratio = xp.power(1.0 - lam, 1.0 / len(axes))
    else:
        lo, hi = minmax
        ratio_u = per_pair(xp.uniform((n, len(axes))))
    mask = None
    area = None
    total = 1.0
    for k, axis in enumerate(axes):
        size = xp.cast(dims[axis], "float32")
        if minmax is None:
            side = xp.round(ratio * size)
            side = xp.where(active, side, 0.0)
            start = xp.floor(u[:, k] * size) - xp.floor(side / 2.0)
            low = xp.clip(start, 0.0, size)
            high = xp.clip(start + side, 0.0, size)
        else:
            side = xp.floor((lo + (hi - lo) * ratio_u[:, k]) * size)
            side = xp.where(active, side, 0.0)
            low = xp.floor(u[:, k] * (size - side + 1.0))
            high = low + side
        span = high - low
        area = span if area is None else area * span
        total = total * size
        position = xp.cast(xp.arange(dims[axis]), "float32")
        position = xp.reshape(position, (1, -1))
        inside = xp.logical_and(
            position >= low[:, None], position < high[:, None]
        )
        shape = [-1] + [1] * (rank - 1)
        shape[axis] = dims[axis]
        inside = xp.reshape(inside, tuple(shape))
        mask = inside if mask is None else xp.logical_and(mask, inside)
    return mask, area / total


def mix_batch(
    xp,
    x,
    *,
    mode,
    probability,
    mixup_alpha=None,
    cutmix_alpha=None,
    switch_prob=None,
    correct_lam=True,
    minmax=None,
    axes=None,
):
    """Mixes a batch with MixUp, CutMix or a per-draw choice of the two.

    `mixup_alpha=None` disables MixUp, `cutmix_alpha=None` disables CutMix
    (with both given, CutMix is chosen with probability `switch_prob`).

    Returns:
        `(mixed, lam, partner)`: the mixed batch in `x.dtype`, the float32
        weight `(B,)` of each sample's own label and the int32 index `(B,)` of
        its partner. Mixed labels are `lam * y + (1 - lam) * y[partner]`.
    """
    rank = len(x.shape)
    batch = xp.shape(x)[0]
    n = 1 if mode == "batch" else batch
    partner = make_partners(xp, batch, mode)
    pair_index = None
    if mode == "pair":
        pair_index = xp.minimum(xp.arange(batch), partner)

    def per_pair(values):
        return values if pair_index is None else xp.take(values, pair_index)

    mixed = per_pair(xp.uniform((n,))) < probability
    if mixup_alpha is None:
        use_cut = mixed
    elif cutmix_alpha is None:
        use_cut = None
    else:
        use_cut = xp.logical_and(
            mixed, per_pair(xp.uniform((n,))) < switch_prob
        )

    x_partner = xp.take(x, partner)
    bshape = _per_draw(x, rank)
    out = x
    lam = None
    if mixup_alpha is not None:
        blend = (
            mixed
            if use_cut is None
            else xp.logical_and(mixed, xp.logical_not(use_cut))
        )
        lam_m = per_pair(sample_beta(xp, mixup_alpha, n))
        lam_m = xp.where(blend, lam_m, 1.0)
        # Round lambda to the images' dtype first, so the labels get exactly
        # the weight the images got (matters for float16 and bfloat16).
        w = xp.cast(lam_m, x.dtype)
        lam = xp.cast(w, "float32")
        w = xp.reshape(w, bshape)
        out = xp.blend(x, x_partner, w)
    if cutmix_alpha is not None:
        if minmax is None:
            lam_c = per_pair(sample_beta(xp, cutmix_alpha, n))
        else:
            lam_c = xp.ones((n,))
        mask, fraction = cut_boxes(
            xp, x, lam_c, use_cut, axes, minmax, per_pair
        )
        if correct_lam or minmax is not None:
            lam_c = 1.0 - fraction
        else:
            lam_c = xp.where(use_cut, lam_c, 1.0)
        out = xp.where(mask, x_partner, out)
        lam = lam_c if lam is None else xp.where(use_cut, lam_c, lam)
    lam = lam * xp.ones((batch,))
    return out, lam, partner


def _is_integer(dtype):
    return "int" in dtype or dtype == "bool"


def prepare_labels(xp, labels, num_classes, label_smoothing):
    """Checked, one-hot (for ids) and smoothed float32 soft targets.

    The label rules of every mixing layer:

    - Integer (or bool) class ids `(batch,)`/`(batch, 1)` need
      `num_classes`; ids outside `[0, num_classes)` are refused.
    - Float targets `(batch,)` or `(batch, 1)` are binary targets, which
      must lie in `[0, 1]`; they are refused when `num_classes > 2` is set
      (float class ids are not mixed as numbers).
    - Float targets `(batch, ..., classes)` are soft or multi-hot rows with
      `classes` columns (`num_classes` when set).

    Bad values raise `ValueError` where the values can be read (eager
    calls, `tf.data`, TensorFlow graphs, where TensorFlow raises
    `InvalidArgumentError` with the same message); inside a compiled JAX or
    XLA step the offending rows become NaN instead.

    Smoothing `e` maps every target to `y * (1 - e) + e / classes`, with
    `classes = 2` for binary targets and the number of columns otherwise;
    multi-hot rows are smoothed column by column with the same map.
    """
    dtype = xp.dtype(labels)
    rank = len(labels.shape)
    if rank == 0:
        fail(
            "labels",
            "a batch of labels, of rank >= 1",
            f"tensor of shape {tuple(labels.shape)}",
        )
    nan = float("nan")
    if _is_integer(dtype):
        if num_classes is None:
            fail(
                "num_classes",
                "the number of classes when labels are integer class ids",
                num_classes,
            )
        if rank == 2 and labels.shape[-1] == 1:
            labels = xp.reshape(labels, (-1,))
        if len(labels.shape) != 1:
            fail(
                "labels",
                "integer class ids of shape (batch,) or (batch, 1), or "
                "float targets of shape (batch, classes)",
                f"tensor of shape {tuple(labels.shape)}",
            )
        ids = xp.cast(labels, "int32")
        valid = xp.logical_and(ids >= 0, ids < num_classes)
        ids = xp.require(
            valid,
            ids,
            "labels",
            f"integer class ids in [0, {num_classes})",
            guard=ids,
        )
        labels = xp.one_hot(xp.where(valid, ids, 0), num_classes)
        labels = xp.where(xp.reshape(valid, (-1, 1)), labels, nan)
        classes = num_classes
    else:
        labels = xp.cast(labels, "float32")
        binary = rank == 1 or labels.shape[-1] == 1
        if binary:
            if num_classes is not None and num_classes > 2:
                fail(
                    "labels",
                    f"integer class ids or float targets with {num_classes} "
                    "columns for num_classes="
                    f"{num_classes} (float targets of shape (batch,) or "
                    "(batch, 1) are binary targets in [0, 1])",
                    f"float tensor of shape {tuple(labels.shape)}",
                )
            valid = xp.logical_and(labels >= 0.0, labels <= 1.0)
            labels = xp.require(
                valid,
                labels,
                "labels",
                "binary targets in [0, 1] (float labels of shape (batch,) "
                "or (batch, 1)); pass class ids as integers",
                guard=labels,
            )
            labels = xp.where(valid, labels, nan)
            classes = 2
        else:
            classes = labels.shape[-1]
            if num_classes is not None and classes not in (None, num_classes):
                fail(
                    "labels",
                    f"float targets with num_classes={num_classes} columns",
                    f"tensor of shape {tuple(labels.shape)}",
                )
    if label_smoothing:
        if classes is None:
            # Unknown column count: decided when the step runs.
            classes = xp.cast(xp.shape(labels)[-1], "float32")
            classes = xp.where(classes == 1.0, 2.0, classes)
        labels = labels * (1.0 - label_smoothing) + label_smoothing / classes
    return labels


def mix_labels(xp, labels, lam, partner):
    """`lam * y + (1 - lam) * y[partner]`, broadcast over trailing axes."""
    w = xp.reshape(lam, _per_draw(labels, len(labels.shape)))
    return labels * w + xp.take(labels, partner) * (1.0 - w)


def check_alpha(name, value):
    return check_number(name, value, 0.0, low_open=True)


def check_probability(name, value):
    return check_number(name, value, 0.0, 1.0)


def check_minmax(name, value):
    """`None`, or two increasing numbers in `(0, 1]`."""
    if value is None:
        return None
    expected = "None or two increasing numbers in (0, 1]"
    try:
        lo, hi = value
        lo = check_number(name, lo, 0.0, 1.0, low_open=True)
        hi = check_number(name, hi, 0.0, 1.0, low_open=True)
    except (TypeError, ValueError):
        fail(name, expected, value)
    if not lo < hi:
        fail(name, expected, value)
    return (lo, hi)


class BaseMixing(keras.layers.Layer):
    """Shared call contract of `MixupLayer`, `CutMixLayer` and `RandomMix`.

    Subclasses set `_needs_spatial_axes` and implement `_mix(xp, images)`.
    """

    _needs_spatial_axes = False

    def __init__(
        self,
        num_classes=None,
        label_smoothing=0.0,
        mode="batch",
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        # Images are cast to the compute dtype here and labels kept in
        # float32, so the base class must not autocast the whole structure.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, 1)
        self.num_classes = num_classes
        self.label_smoothing = check_rate("label_smoothing", label_smoothing)
        self.mode = check_choice("mode", mode, MODES)
        self.probability = probability
        self.seed = check_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Lazily holds a tf.random.Generator for tf.data under other backends.
        self._tf_data_state = {}
        # Every variable exists now; nothing depends on the input shape.
        self.built = True

    probability = ScalarVariable(
        check_probability,
        "Chance that a batch (or a sample, or a pair) is mixed at all.",
    )

    def _axes(self, images):
        rank = len(images.shape)
        if rank not in (3, 4, 5):
            fail(
                "inputs",
                "inputs of rank 3 (batch, steps, channels), 4 (images) or 5 "
                "(volumes) for CutMix",
                f"tensor of shape {tuple(images.shape)}",
            )
        return spatial_axes(rank, self.data_format)

    def mix_images(self, images):
        """Mixes a batch of images on the active backend.

        This is the on-device half of the layer, used by
        `keras_regularize.models.MixingModel` inside `fit`.

        Args:
            images: Tensor `(batch, ...)`; cast to the layer's compute dtype.

        Returns:
            Tuple `(mixed, lam, partner)`: the mixed images, the float32
            weight `(batch,)` of each sample's own label, and the int32
            index `(batch,)` of its partner. Mixed targets are
            `lam * y + (1 - lam) * y[partner]`.
        """
        xp = KerasOps(self.seed_generator)
        images = xp.cast(xp.convert(images), self.compute_dtype)
        return self._mix(xp, images)

    def prepare_labels(self, labels, smoothing=None):
        """Checked, one-hot (for integer ids) and smoothed float32 targets.

        Args:
            labels: Integer class ids `(batch,)`/`(batch, 1)`, binary float
                targets `(batch,)`/`(batch, 1)` in `[0, 1]`, or float rows
                `(batch, ..., classes)`.
            smoothing: Optional float overriding `label_smoothing`.

        Returns:
            Float32 targets: one-hot rows for ids; binary targets keep
            their shape. Smoothing `e` gives `y * (1 - e) + e / classes`,
            with `classes = 2` for binary targets.
        """
        xp = KerasOps(self.seed_generator)
        if smoothing is None:
            smoothing = self.label_smoothing
        return prepare_labels(
            xp, xp.convert(labels), self.num_classes, smoothing
        )

    def __call__(self, *args, **kwargs):
        if _backend.is_foreign_tf_data((args, kwargs)):
            # A `tf.data` pipeline under the jax or torch backend: run the
            # same maths with TensorFlow operations (see `_backend`).
            return self._mix_structure(
                _backend.tf_mixing_ops(self), *args, **kwargs
            )
        return super().__call__(*args, **kwargs)

    def call(self, inputs, labels=None, training=True):
        return self._mix_structure(
            KerasOps(self.seed_generator), inputs, labels, training=training
        )

    def _split(self, inputs, labels):
        """Returns `(images, labels, rebuild)`; `rebuild` restores the form."""
        if labels is not None:
            return inputs, labels, lambda x, y: (x, y)
        if isinstance(inputs, dict):
            if "images" not in inputs or "labels" not in inputs:
                self._labels_needed(inputs)
            rest = {
                k: v for k, v in inputs.items() if k not in ("images", "labels")
            }
            return (
                inputs["images"],
                inputs["labels"],
                lambda x, y: {**rest, "images": x, "labels": y},
            )
        if isinstance(inputs, (tuple, list)):
            if len(inputs) != 2:
                self._labels_needed(inputs)
            kind = type(inputs) if isinstance(inputs, list) else tuple
            return inputs[0], inputs[1], lambda x, y: kind((x, y))
        self._labels_needed(inputs)

    def _labels_needed(self, inputs):
        name = type(self).__name__
        raise ValueError(
            f"{name} mixes images and labels together and needs both: call "
            f"it as `layer((images, labels))`, `layer(images, labels)` or "
            f"`layer({{'images': images, 'labels': labels}})`, e.g. in "
            f"`dataset.map(layer)`. To mix on device inside `fit`, wrap the "
            f"model instead: `keras_regularize.models.MixingModel(model, "
            f"{name}(...))`. Received: inputs={inputs!r}"
        )

    def _check_batch(self, images, labels):
        for name, value in (("inputs", images), ("labels", labels)):
            if len(value.shape) == 0:
                fail(
                    name,
                    "a batch: a tensor of rank >= 1",
                    f"tensor of shape {tuple(value.shape)}",
                )
        a, b = images.shape[0], labels.shape[0]
        if a is not None and b is not None and a != b:
            fail(
                "labels",
                f"labels with the batch size of the images ({a})",
                f"tensor of shape {tuple(labels.shape)}",
            )

    def _mix_structure(self, xp, inputs, labels=None, training=True):
        images, labels, rebuild = self._split(inputs, labels)
        images = xp.cast(xp.convert(images), self.compute_dtype)
        labels = xp.convert(labels)
        self._check_batch(images, labels)
        if self._needs_spatial_axes:
            self._axes(images)
        targets = prepare_labels(
            xp, labels, self.num_classes, self.label_smoothing
        )
        if not training:
            return rebuild(images, targets)
        mixed, lam, partner = self._mix(xp, images)
        return rebuild(mixed, mix_labels(xp, targets, lam, partner))

    def compute_output_spec(self, inputs, labels=None, training=True):
        images, labels, rebuild = self._split(inputs, labels)
        self._check_batch(images, labels)
        if self._needs_spatial_axes:
            self._axes(images)
        # The label rules on symbolic tensors: static checks and the shape.
        targets = prepare_labels(
            KerasOps(None), labels, self.num_classes, self.label_smoothing
        )
        return rebuild(
            keras.KerasTensor(images.shape, dtype=self.compute_dtype),
            keras.KerasTensor(tuple(targets.shape), dtype="float32"),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
            "mode": self.mode,
            "probability": self.probability,
            "seed": self.seed,
        }
