"""How a model wrapper's training step splits for steps that differentiate
its loss more than once (`SharpnessAwareMinimization`).

A step of such a trainer has two parts:

1. `prepare_train_batch(model, x, y, sample_weight)`, once per step: work
   that does not depend on the trainable weights. A wrapper opts in by
   defining a method of the same name that returns the batch with that work
   done, e.g. `Distiller` adds its teachers' outputs as the cached input
   column its loss already reads, so the teachers run once per step.
2. The loss of the prepared batch, `model(x, training=True)` followed by
   `model.compute_loss(...)`, evaluated once per gradient. Every evaluation
   starts from the same non-trainable state (seed generators included), so
   random draws made in `call` (a `MixingModel`'s mixing, dropout masks)
   come out the same in each: such wrappers need no method of their own.
"""


def prepare_train_batch(model, x, y=None, sample_weight=None):
    """`(x, y, sample_weight)` for every loss evaluation of one step."""
    prepare = getattr(model, "prepare_train_batch", None)
    if prepare is None:
        return x, y, sample_weight
    return prepare(x, y, sample_weight)
