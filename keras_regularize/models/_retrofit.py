"""Retrofitting stochastic depth and head dropout onto an existing model.

Papers: Deep Networks with Stochastic Depth (https://arxiv.org/abs/1603.09382).
Code: timm's `drop_path_rate=` constructor argument and its linear schedule,
which this applies to a model after it was built.
"""

import warnings

import keras

from keras_regularize._export import export
from keras_regularize._validation import check_choice
from keras_regularize._validation import check_rate
from keras_regularize._validation import check_seed
from keras_regularize._validation import fail
from keras_regularize.models._retrofit_graph import functional_of
from keras_regularize.models._retrofit_report import RegularizationReport
from keras_regularize.models._retrofit_rewrite import Rewriter

MODES = ("row", "skip")

_SUPPORTED = (
    "a Functional or built Sequential `keras.Model` (a subclassed model "
    "runs Python code whose graph cannot be rebuilt: put "
    "`keras_regularize.layers.DropPath` or `StochasticResidual` in its "
    "definition instead)"
)


def _check_model(model):
    if not isinstance(model, keras.Model) or functional_of(model) is None:
        if isinstance(model, keras.Sequential):
            fail(
                "model",
                "a built Sequential model (start it with `keras.Input` or "
                "call it once, so that its graph exists)",
                model,
            )
        fail("model", _SUPPORTED, model)
    return model


@export("keras_regularize.models.add_regularization")
def add_regularization(
    model, *, drop_path=0.0, drop_path_mode="row", head_dropout=0.0, seed=None
):
    """Adds stochastic depth and head dropout to an existing model.

    Returns a new Functional model that runs the same layers as `model`,
    with a `keras_regularize.layers.DropPath` on the residual branch of
    every residual merge and, optionally, a `Dropout` before the final
    classifier. `model` itself is not modified.

    **Finding the merges.** A residual merge is a two-input
    `keras.layers.Add` layer or `+` / `keras.ops.add` operation whose inputs
    have the same shape and are related in one of two ways:

    - *identity skip*: one input is an ancestor of the other in the graph;
      the ancestor is the shortcut, the other input the residual branch;
    - *projection skip*: both inputs descend from a common tensor (the
      latest one they share); the input reached through fewer operations
      from it is the shortcut (ResNet50's 1x1 convolution), the other the
      branch.

    An add whose inputs share no ancestor, or whose two paths are equally
    long, is left alone and named in a warning. Functional and Sequential
    sub-models are searched too (and rebuilt); subclassed layers and models
    that hold other layers are opaque: merges inside them are not seen, and
    a warning names them.

    **Rates.** Merge `i` of the `n` found, in topological order, gets
    `drop_path_rates(n, drop_path)[i]`: `0` for the first, rising linearly
    to `drop_path` for the last, as in the stochastic depth paper and
    timm's `drop_path_rate`. With `drop_path=0` (the default) the merges
    are reported but left as they are.

    **Existing stochastic depth is replaced.** A per-sample drop layer
    directly before a merge, on its branch, is replaced by the new
    `DropPath` with the scheduled rate, so a branch never gets two: our
    own `DropPath`, `keras.applications` ConvNeXt's private
    `StochasticDepth`, and a `Dropout(noise_shape=(None, 1, 1, 1))`
    (EfficientNet's drop connect). The report names what was replaced.

    **`drop_path_mode="skip"`.** An identity-skip branch that reads nothing
    but the shortcut, and whose tensors nothing else uses, is extracted
    into a sub-model wrapped in
    `keras_regularize.layers.StochasticResidual(mode="batch")`: a dropped
    branch is not computed at all (one decision per batch). Other merges
    (projection skips, branches with outside inputs) fall back to `"row"`;
    the report counts and explains them.

    **`head_dropout`** inserts `keras.layers.Dropout(head_dropout)` before
    the last `Dense` layer of the top-level graph, unless a `Dropout`
    already feeds it.

    **Weights are shared.** The new model calls the very layer objects of
    `model`, so it holds the same variables: nothing is copied, inference
    (`training=False`) is bit-identical, and training the new model trains
    `model` too. For an independent copy, clone first
    (`copy = keras.models.clone_model(model)`;
    `copy.set_weights(model.get_weights())`) or reload a `.keras` file of
    the result, which holds its own copy. `model` keeps its own graph: it
    predicts, trains and saves as before.

    The new layers are named after their merge (`conv2_block1_add_drop_path`)
    and registered, so the result saves to `.keras` and loads with no
    `custom_objects`. The `DropPath` rates are variables: a callback may
    change them during training.

    Args:
        model: A Functional or built Sequential `keras.Model`.
        drop_path: Float in `[0, 1)`. The drop rate of the last residual
            branch. Defaults to `0.0` (no drop path).
        drop_path_mode: `"row"` (a `DropPath` per branch, one decision per
            sample) or `"skip"` (branches extracted into
            `StochasticResidual(mode="batch")`, skipped per batch, where
            possible). Defaults to `"row"`.
        head_dropout: Float in `[0, 1)`. Rate of the `Dropout` before the
            classifier. Defaults to `0.0` (none).
        seed: Optional non-negative int. The `k`-th new layer gets seed
            `seed + k`, so their masks are independent but reproducible.
            Defaults to `None`.

    Returns:
        A tuple `(new_model, report)`: the new Functional `keras.Model`, and
        a `RegularizationReport` whose `str()` lists the merges found (name,
        layer or op, identity or projection, rate, mode), what was left
        alone and why, and the head dropout; `report.rates` is the list of
        rates and `report.fallbacks` the number of skip-mode fallbacks.

    Example:

    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(8, name="stem")(inputs)
    >>> for k in range(3):
    ...     x = x + keras.layers.Dense(8, name=f"block{k}")(x)
    >>> outputs = keras.layers.Dense(2, name="classifier")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> new_model, report = keras_regularize.models.add_regularization(
    ...     model, drop_path=0.2, head_dropout=0.5, seed=0)
    >>> report.rates
    [0.0, 0.1, 0.2]
    >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
    add_regularization: 3 residual merges, drop_path=0.2,
    drop_path_mode='row'
        #  merge  kind   skip        rate   mode
        0  add    op     identity    0.000  row
        1  add_1  op     identity    0.100  row
        2  add_2  op     identity    0.200  row
    head dropout: Dropout(0.5) before 'classifier'
    >>> x = np.ones((2, 8), "float32")
    >>> bool(np.array_equal(model.predict(x, verbose=0),
    ...                     new_model.predict(x, verbose=0)))
    True

    References:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
    """
    model = _check_model(model)
    drop_path = check_rate("drop_path", drop_path)
    drop_path_mode = check_choice("drop_path_mode", drop_path_mode, MODES)
    head_dropout = check_rate("head_dropout", head_dropout)
    seed = check_seed("seed", seed)

    rewriter = Rewriter(model, drop_path, drop_path_mode, head_dropout, seed)
    rewriter.plan()
    rewriter.plan_head(model)
    new_model = rewriter.rebuild(model)
    report = RegularizationReport(
        drop_path=drop_path,
        drop_path_mode=drop_path_mode,
        merges=rewriter.report_merges(),
        skipped=tuple(rewriter.skipped),
        opaque=tuple(rewriter.opaque),
        head=rewriter.head,
        head_dropout=head_dropout,
        head_note=rewriter.head_note,
    )
    _warn(report, model)
    return new_model, report


def _warn(report, model):
    problems = []
    if report.drop_path > 0 and not report.merges:
        problems.append(
            f"found no residual merges in model '{model.name}', so no drop "
            "path was added"
        )
    for name, reason in report.skipped:
        problems.append(f"left the add '{name}' alone: {reason}")
    if report.opaque:
        problems.append(
            "could not look inside these subclassed layers, whose merges "
            "(if any) got no drop path: " + ", ".join(report.opaque)
        )
    if report.head_dropout > 0 and report.head is None:
        problems.append(f"added no head dropout: {report.head_note}")
    if problems:
        warnings.warn(
            "add_regularization " + "; ".join(problems) + ".", stacklevel=3
        )
