"""Reading a Functional model's graph: nodes, ancestry, residual merges.

Everything here that touches Keras's graph internals (`_nodes_by_depth`,
`Node.arguments`, `_inputs_struct`) is kept in this module, so that a change
in Keras breaks one file. These are attributes of public objects, stable
across Keras 3.x; no `keras.src` module is imported.
"""

import keras

from keras_regularize.layers.drop_path import DropPath


def functional_of(model):
    """The Functional graph that runs `model`, or `None` if it has none.

    A Sequential model runs through the Functional it builds once its input
    shape is known; a subclassed model has no graph.
    """
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def is_opaque(layer):
    """Whether `layer` holds layers this rewrite cannot see into.

    Subclassed models, and layers outside Keras that hold sublayers (a
    custom residual block), run Python code rather than a graph: a merge
    inside them is invisible.
    """
    if functional_of(layer) is not None:
        return False
    if isinstance(layer, keras.Model):
        return True
    if type(layer).__module__.startswith("keras."):
        return False
    return any(True for _ in _sublayers(layer))


def _sublayers(layer):
    for value in vars(layer).values():
        if isinstance(value, keras.layers.Layer):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, keras.layers.Layer))


def drop_kind(op):
    """A description of `op` if it drops whole samples, else `None`.

    Recognized: our `DropPath`, `keras.applications`' private
    `StochasticDepth` (ConvNeXt), and a `Dropout` whose `noise_shape` keeps
    only the batch axis (EfficientNet's "drop connect").
    """
    if isinstance(op, DropPath):
        return f"DropPath(rate={op.rate:g})"
    if type(op) is keras.layers.Dropout:
        shape = op.noise_shape
        if (
            shape is not None
            and len(shape) >= 2
            and shape[0] is None
            and all(d == 1 for d in shape[1:])
        ):
            return f"Dropout(rate={op.rate:g}, noise_shape={tuple(shape)})"
        return None
    if type(op).__name__ == "StochasticDepth" and hasattr(op, "drop_path_rate"):
        return f"StochasticDepth(drop_path_rate={op.drop_path_rate:g})"
    return None


def is_add(op):
    """A `keras.layers.Add` layer or a `keras.ops.add` (`+`) operation."""
    if isinstance(op, keras.layers.Add):
        return True
    return (
        not isinstance(op, keras.layers.Layer)
        and type(op).__name__ == "Add"
        and type(op).__module__.startswith("keras.")
    )


def _popcount(bits):
    return bin(bits).count("1")


class Graph:
    """The nodes of one Functional model in topological order.

    `nodes[i]` is a Keras node (input nodes included, so every tensor has a
    producer); `anc[i]` is the bitset of node indices that node `i` depends
    on, itself included.
    """

    def __init__(self, model):
        self.model = model
        self.nodes = []
        by_depth = model._nodes_by_depth
        for depth in sorted(by_depth, reverse=True):
            for node in by_depth[depth]:
                self.nodes.append(node)
        self.producer = {}
        for i, node in enumerate(self.nodes):
            for t in node.outputs:
                self.producer[id(t)] = i
        self.anc = []
        for i in range(len(self.nodes)):
            bits = 1 << i
            for t in self.inputs_of(i):
                p = self.producer.get(id(t))
                if p is not None:
                    bits |= self.anc[p]
            self.anc.append(bits)
        self.consumers = {}
        for i in range(len(self.nodes)):
            for t in self.inputs_of(i):
                self.consumers.setdefault(id(t), []).append(i)
        self.output_ids = {id(t) for t in model.outputs}

    def inputs_of(self, i):
        node = self.nodes[i]
        if node.is_input:
            return []
        return list(node.input_tensors)

    def is_input(self, i):
        return self.nodes[i].is_input or self.nodes[i].operation is None

    def op(self, i):
        return self.nodes[i].operation

    def classify(self, i):
        """`(kind, shortcut, branch)` of a two-input add node, or a reason.

        `kind` is `"identity"` (the shortcut is an ancestor of the branch)
        or `"projection"` (both start at a common tensor; the shorter path
        is the shortcut). Returns `(None, reason, None)` when the branch
        cannot be told apart.
        """
        ins = self.inputs_of(i)
        a, b = ins
        if a is b:
            return None, "both inputs are the same tensor", None
        if tuple(a.shape) != tuple(b.shape):
            return None, f"inputs of shapes {a.shape} and {b.shape}", None
        pa, pb = self.producer[id(a)], self.producer[id(b)]
        if self.anc[pb] >> pa & 1:
            return "identity", a, b
        if self.anc[pa] >> pb & 1:
            return "identity", b, a
        common = self.anc[pa] & self.anc[pb]
        if not common:
            return None, "the two inputs share no ancestor", None
        fork = common.bit_length() - 1
        len_a = _popcount(self.anc[pa] & ~self.anc[fork])
        len_b = _popcount(self.anc[pb] & ~self.anc[fork])
        if len_a == len_b:
            return (
                None,
                f"both paths from the common input have {len_a} operations",
                None,
            )
        if len_a < len_b:
            return "projection", a, b
        return "projection", b, a

    def branch_nodes(self, shortcut, branch):
        """Node indices computing `branch` from `shortcut`, or a reason.

        For an identity skip: the nodes that `branch` depends on and
        `shortcut` does not. They can be extracted into a sub-model only if
        they read nothing but `shortcut` and each other, and nothing outside
        uses their results.
        """
        ps, pb = self.producer[id(shortcut)], self.producer[id(branch)]
        bits = self.anc[pb] & ~self.anc[ps]
        members = [i for i in range(len(self.nodes)) if bits >> i & 1]
        member_set = set(members)
        for i in members:
            if self.is_input(i):
                return None, "the branch reads another model input"
            for t in self.inputs_of(i):
                if t is shortcut:
                    continue
                if self.producer.get(id(t)) not in member_set:
                    return None, (
                        "the branch reads a tensor other than the shortcut"
                    )
            for t in self.nodes[i].outputs:
                if t is branch:
                    continue
                if id(t) in self.output_ids:
                    return None, "a branch tensor is a model output"
                users = self.consumers.get(id(t), [])
                if any(u not in member_set for u in users):
                    return None, "a branch tensor is used outside the branch"
        if id(branch) in self.output_ids:
            return None, "the branch output is a model output"
        return members, None
