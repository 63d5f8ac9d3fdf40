"""Rebuilding a Functional graph with drop paths on its residual branches."""

import dataclasses

import keras

from keras_regularize._layer_walk import walk_layers
from keras_regularize.layers.drop_path import DropPath
from keras_regularize.layers.drop_path import drop_path_rates
from keras_regularize.layers.stochastic_residual import StochasticResidual
from keras_regularize.models._retrofit_graph import Graph
from keras_regularize.models._retrofit_graph import drop_kind
from keras_regularize.models._retrofit_graph import functional_of
from keras_regularize.models._retrofit_graph import is_add
from keras_regularize.models._retrofit_graph import is_opaque
from keras_regularize.models._retrofit_report import Merge


@dataclasses.dataclass
class _Found:
    """A residual merge, while the rewrite is being planned."""

    graph: Graph
    index: int
    name: str
    kind: str
    skip: str
    shortcut: object
    branch: object
    drop_node: int = None
    replaced: str = None
    members: list = None
    block_output: object = None
    fallback: str = None
    mode: str = "row"
    rate: float = 0.0
    seed: int = None
    layer_name: str = None


class Rewriter:
    """Finds the merges of a model (analysis), then rebuilds it (rebuild)."""

    def __init__(self, model, drop_path, mode, head_dropout, seed):
        self.drop_path = drop_path
        self.mode = mode
        self.head_dropout = head_dropout
        self.seed = seed
        self._next_seed = 0
        self.graphs = {}
        self.rebuilt = {}
        self.found = []
        self.skipped = []
        self.opaque = []
        self.used_names = {layer.name for layer in walk_layers(model)}
        self.actions = {}  # (id(graph), node index) -> callable
        self.head = None
        self.head_note = None
        self._skips = None
        self._analyze(model, "")

    # -- analysis -------------------------------------------------------

    def _analyze(self, model, prefix):
        graph = Graph(functional_of(model))
        self.graphs[id(model)] = graph
        for i in range(len(graph.nodes)):
            if graph.is_input(i):
                continue
            op = graph.op(i)
            if functional_of(op) is not None:
                if id(op) not in self.graphs:
                    self._analyze(op, f"{prefix}{op.name}/")
                continue
            if is_opaque(op):
                self.opaque.append(f"{prefix}{op.name}")
                continue
            if not is_add(op):
                continue
            name = f"{prefix}{op.name}"
            count = len(graph.inputs_of(i))
            if count < 2:
                continue  # `x + constant`: not a merge
            if count > 2:
                self.skipped.append((name, f"an add of {count} tensors"))
                continue
            skip, shortcut, branch = graph.classify(i)
            if skip is None:
                self.skipped.append((name, shortcut))
                continue
            kind = "layer" if isinstance(op, keras.layers.Layer) else "op"
            self.found.append(
                _Found(graph, i, name, kind, skip, shortcut, branch)
            )

    def plan(self):
        """Gives each merge its rate and mode, and each node its action."""
        rates = drop_path_rates(len(self.found), self.drop_path)
        for found, rate in zip(self.found, rates):
            found.rate = rate
            if self.drop_path == 0.0:
                found.mode = "none"
                continue
            found.seed = self._take_seed()
            self._find_existing_drop(found)
            if self.mode == "skip":
                self._plan_skip(found)
            self._set_action(found)

    def _take_seed(self):
        if self.seed is None:
            return None
        self._next_seed += 1
        return self.seed + self._next_seed - 1

    def _find_existing_drop(self, found):
        graph = found.graph
        p = graph.producer[id(found.branch)]
        if graph.is_input(p):
            return
        description = drop_kind(graph.op(p))
        ins = graph.inputs_of(p)
        users = graph.consumers.get(id(found.branch), [])
        if description and len(ins) == 1 and users == [found.index]:
            found.drop_node = p
            found.replaced = description

    def _plan_skip(self, found):
        graph = found.graph
        if found.skip != "identity":
            found.fallback = "a projection shortcut is not the identity"
            return
        users = graph.consumers.get(id(found.branch), [])
        if users != [found.index]:
            found.fallback = "the branch output is used elsewhere too"
            return
        members, reason = graph.branch_nodes(found.shortcut, found.branch)
        if members is None:
            found.fallback = reason
            return
        output = found.branch
        if found.drop_node is not None:
            members = [i for i in members if i != found.drop_node]
            output = graph.inputs_of(found.drop_node)[0]
        if not members or output is found.shortcut:
            found.fallback = "the branch computes nothing"
            return
        found.members = members
        found.block_output = output
        found.mode = "skip"

    def _unique(self, base):
        name, k = base, 1
        while name in self.used_names:
            name = f"{base}_{k}"
            k += 1
        self.used_names.add(name)
        return name

    def _set_action(self, found):
        graph = found.graph
        if found.mode == "skip":
            self.actions[(id(graph), found.index)] = (
                lambda tensors, found=found: self._run_skip(found, tensors)
            )
            return
        op = graph.op(found.index)
        found.layer_name = self._unique(f"{op.name}_drop_path")
        policy = _policy(graph, found)
        if found.drop_node is not None:
            # The existing drop layer's place: a DropPath on its input.
            node = found.drop_node
            source = graph.inputs_of(node)[0]
            self.actions[(id(graph), node)] = (
                lambda tensors, found=found, source=source, policy=policy: [
                    self._drop_path(found, policy)(tensors[id(source)])
                ]
            )
            return
        branch = found.branch

        def run(tensors, found=found, policy=policy, branch=branch):
            local = dict(tensors)
            local[id(branch)] = self._drop_path(found, policy)(
                tensors[id(branch)]
            )
            return self._call_node(found.graph, found.index, local)

        self.actions[(id(graph), found.index)] = run

    def _drop_path(self, found, policy):
        return DropPath(
            found.rate,
            mode="row",
            seed=found.seed,
            name=found.layer_name,
            dtype=policy,
        )

    def plan_head(self, model):
        """Plans a `Dropout` before the last top-level `Dense`."""
        if self.head_dropout == 0.0:
            return
        graph = self.graphs[id(model)]
        for i in reversed(range(len(graph.nodes))):
            if graph.is_input(i) or type(graph.op(i)) is not keras.layers.Dense:
                continue
            dense = graph.op(i)
            (source,) = graph.inputs_of(i)[:1]
            p = graph.producer[id(source)]
            if not graph.is_input(p) and isinstance(
                graph.op(p), keras.layers.Dropout
            ):
                self.head_note = (
                    f"'{graph.op(p).name}' already drops the input of "
                    f"'{dense.name}'"
                )
                return
            self.head = dense.name
            name = self._unique(f"{dense.name}_head_dropout")
            seed = self._take_seed()

            def run(
                tensors, i=i, source=source, dense=dense, seed=seed, name=name
            ):
                local = dict(tensors)
                local[id(source)] = keras.layers.Dropout(
                    self.head_dropout,
                    seed=seed,
                    name=name,
                    dtype=dense.dtype_policy,
                )(tensors[id(source)])
                return self._call_node(graph, i, local)

            self.actions[(id(graph), i)] = run
            return
        self.head_note = "the model has no Dense layer at its top level"

    # -- rebuild --------------------------------------------------------

    def rebuild(self, model):
        """A new Functional model running `model`'s graph, rewritten."""
        if id(model) in self.rebuilt:
            return self.rebuilt[id(model)]
        fn = functional_of(model)
        graph = self.graphs[id(model)]
        tensors = {}
        new_inputs = []
        for t in fn.inputs:
            op = graph.op(graph.producer[id(t)])
            new = keras.Input(
                batch_shape=t.shape,
                dtype=t.dtype,
                sparse=t.sparse,
                name=op.name,
            )
            tensors[id(t)] = new
            new_inputs.append(new)
        order = [i for i in range(len(graph.nodes)) if not graph.is_input(i)]
        self._run(graph, order, tensors)
        outputs = [tensors[id(t)] for t in fn.outputs]
        new_model = keras.Model(
            keras.tree.pack_sequence_as(fn._inputs_struct, new_inputs),
            keras.tree.pack_sequence_as(fn._outputs_struct, outputs),
            name=model.name,
        )
        self.rebuilt[id(model)] = new_model
        return new_model

    def _run(self, graph, order, tensors):
        """Runs nodes `order` of `graph`, filling `tensors` (id -> tensor)."""
        hidden = set()
        for i in order:
            found = self._skip_at(graph, i)
            if found is not None:
                hidden.update(found.members)
                if found.drop_node is not None:
                    hidden.add(found.drop_node)
        for i in order:
            if i in hidden:
                continue
            node = graph.nodes[i]
            found = self._skip_at(graph, i)
            needed = graph.inputs_of(i) if found is None else [found.shortcut]
            if any(id(t) not in tensors for t in needed):
                continue  # not computable from these inputs, as in Keras
            action = self.actions.get((id(graph), i))
            if action is None:
                outputs = self._call_node(graph, i, tensors)
            else:
                outputs = action(tensors)
            for t, y in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(t)] = y

    def _skip_at(self, graph, i):
        """The merge at node `i` if its branch is extracted, else `None`."""
        if self._skips is None:
            self._skips = {
                (id(f.graph), f.index): f
                for f in self.found
                if f.mode == "skip"
            }
        return self._skips.get((id(graph), i))

    def _call_node(self, graph, i, tensors):
        node = graph.nodes[i]
        args, kwargs = node.arguments.fill_in(tensors)
        op = node.operation
        if functional_of(op) is not None:
            op = self.rebuild(op)
        return op(*args, **kwargs)

    def _run_skip(self, found, tensors):
        graph = found.graph
        shortcut = found.shortcut
        block_input = keras.Input(
            batch_shape=shortcut.shape, dtype=shortcut.dtype
        )
        inner = {id(shortcut): block_input}
        self._run(graph, sorted(found.members), inner)
        op = graph.op(found.index)
        base = op.name
        block = keras.Model(
            block_input,
            inner[id(found.block_output)],
            name=self._unique(f"{base}_branch"),
        )
        found.layer_name = self._unique(f"{base}_stochastic_residual")
        layer = StochasticResidual(
            block,
            rate=found.rate,
            mode="batch",
            seed=found.seed,
            name=found.layer_name,
            dtype=_policy(graph, found),
        )
        return [layer(tensors[id(shortcut)])]

    def report_merges(self):
        return tuple(
            Merge(
                name=f.name,
                kind=f.kind,
                skip=f.skip,
                rate=f.rate,
                mode=f.mode,
                layer=f.layer_name,
                replaced=f.replaced if f.mode != "none" else None,
                fallback=f.fallback,
            )
            for f in self.found
        )


def _policy(graph, found):
    """The dtype policy of the layer nearest the merge, for new layers."""
    op = graph.op(found.index)
    if isinstance(op, keras.layers.Layer):
        return op.dtype_policy
    p = graph.producer[id(found.branch)]
    if not graph.is_input(p) and isinstance(graph.op(p), keras.layers.Layer):
        return graph.op(p).dtype_policy
    return keras.config.dtype_policy()
