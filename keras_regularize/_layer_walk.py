"""One traversal of the layers a Keras layer or model holds."""

import collections.abc

import keras

# Attributes the package stores on a user's layer for its own bookkeeping
# (caches, e.g. `mc_predict`'s compiled forwards) start with this prefix.
# They are not part of the model, so the walk never enters them.
PRIVATE_ATTRIBUTE_PREFIX = "_keras_regularize_"

# What the walk enters: layers, and the containers that may hold them.
_WALKED = (keras.layers.Layer, collections.abc.Mapping, list, tuple)


def _attributes(layer):
    """The values `layer` holds, in attribute order, bookkeeping left out."""
    values = [
        value
        for name, value in vars(layer).items()
        if not name.startswith(PRIVATE_ATTRIBUTE_PREFIX)
    ]
    if isinstance(layer, keras.Model):
        # Sequential and Functional models list their layers here too.
        values += list(layer.layers)
    return values


def walk_layers(root):
    """Yields `root` and every layer reachable from it, each once.

    Follows every attribute of each layer, and the lists, tuples and dicts
    of them at any depth: the layers of Sequential and Functional models,
    nested models, wrappers (`Bidirectional`, `TimeDistributed`,
    `WeightNoise`, ...) and the sublayers of custom layers. The order is
    depth first, a layer before what it holds, in attribute order. A layer
    reached twice (shared by two blocks, or held by one of its own
    sublayers) is yielded the first time only, and cycles end.

    Args:
        root: A `keras.layers.Layer` (a model is a layer), or a list or
            dict of them. Anything else yields nothing.

    Yields:
        `keras.layers.Layer` objects, `root` first.
    """
    seen = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        # Everything on the stack is held by a parent, so its id is stable.
        if not isinstance(obj, _WALKED) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, keras.layers.Layer):
            yield obj
            children = _attributes(obj)
        elif isinstance(obj, collections.abc.Mapping):
            children = list(obj.values())
        else:
            children = list(obj)
        stack.extend(reversed(children))
