"""The mixing maths: Beta draws, partners, CutMix boxes and labels.

Papers: mixup (https://arxiv.org/abs/1710.09412); CutMix
(https://arxiv.org/abs/1905.04899). Gamma sampling: Marsaglia and Tsang,
"A Simple Method for Generating Gamma Variables" (ACM TOMS, 2000).

Every function takes `xp`, one of the operation sets of `_mixing_ops`
(`KerasOps` on the active backend, `TFOps` inside `tf.data` under another
backend), and uses nothing else, so the same code runs on both.
"""

from keras_regularize._validation import fail
from keras_regularize._validation import fail_shape

MODES = ("batch", "pair", "elem")

# Marsaglia-Tsang accepts a candidate with probability >= 0.95 for shape >= 1,
# so eight unrolled rounds leave a draw unaccepted with probability < 1e-10
# (it then takes the last candidate). A fixed count keeps the graph static,
# which is what lets the sampler compile under XLA, jax.jit and torch.
GAMMA_ROUNDS = 8


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
        fail_shape("labels", "a batch of labels, of rank >= 1", labels.shape)
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
            fail_shape(
                "labels",
                "integer class ids of shape (batch,) or (batch, 1), or "
                "float targets of shape (batch, classes)",
                labels.shape,
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
                fail_shape(
                    "labels",
                    f"integer class ids or float targets with {num_classes} "
                    f"columns for num_classes={num_classes} (float targets "
                    "of shape (batch,) or (batch, 1) are binary targets in "
                    "[0, 1])",
                    labels.shape,
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
                fail_shape(
                    "labels",
                    f"float targets with num_classes={num_classes} columns",
                    labels.shape,
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
