"""Tests for keras_regularize._layer_walk."""

import keras
import numpy as np

from keras_regularize import _layer_walk
from keras_regularize._layer_walk import walk_layers
from keras_regularize.layers import MCDropout
from keras_regularize.layers import WeightNoise
from keras_regularize.models import mc_predict

L = keras.layers


def _names(root):
    return [layer.name for layer in walk_layers(root)]


def _ids(root):
    return [id(layer) for layer in walk_layers(root)]


def test_root_comes_first_and_every_layer_once():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="head")(inputs), name="m")
    names = _names(model)
    assert names[0] == "m" and "head" in names
    assert len(_ids(model)) == len(set(_ids(model)))


def test_nested_functional_and_sequential_models():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(3, name="deep")(inner_in), name="f")
    seq = keras.Sequential(
        [keras.Input((3,)), L.Dense(2, name="seq_dense")], name="s"
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, seq(inner(inputs)), name="outer")
    names = _names(model)
    for name in ("outer", "f", "deep", "s", "seq_dense"):
        assert name in names
    # A model comes before the layers it holds.
    assert names.index("f") < names.index("deep")
    assert names.index("s") < names.index("seq_dense")


def test_a_layer_shared_by_two_branches_is_visited_once():
    shared = L.Dense(4, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], L.Add()([shared(a), shared(b)]))
    block = keras.Sequential([shared])
    outer = keras.Model([a, b], block(model([a, b])))
    assert _names(outer).count("shared") == 1


def test_wrappers_are_entered():
    inputs = keras.Input((5, 3))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True, name="lstm"))(inputs)
    x = L.TimeDistributed(L.Dense(2, name="per_step"))(x)
    x = WeightNoise(L.Dense(1, name="noisy"), 0.1)(L.Flatten()(x))
    types = {
        type(layer).__name__ for layer in walk_layers(keras.Model(inputs, x))
    }
    for kind in ("Bidirectional", "LSTM", "LSTMCell", "TimeDistributed"):
        assert kind in types
    names = _names(keras.Model(inputs, x))
    assert "per_step" in names and "noisy" in names
    # Both directions of the Bidirectional wrapper.
    assert (
        sum(name.startswith(("forward_", "backward_")) for name in names) >= 2
    )


class _Holder(L.Layer):
    """Sublayers in a dict, a list of lists and a plain attribute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.by_key = {"a": L.Dense(1, name="in_dict")}
        self.grid = [[L.Dense(1, name="in_grid")]]
        self.single = L.Dense(1, name="single")

    def call(self, x):
        return x


def test_custom_layers_and_their_containers():
    names = _names(_Holder(name="holder"))
    assert names[0] == "holder"
    assert {"in_dict", "in_grid", "single"} <= set(names)


def test_a_cycle_ends():
    outer = _Holder(name="outer")
    inner = _Holder(name="inner")
    outer.single = inner
    # A back reference, outside Keras tracking, as a parent pointer would be.
    object.__setattr__(inner, "parent", outer)
    names = _names(outer)
    assert names.count("outer") == 1 and names.count("inner") == 1


def test_plain_values_and_non_layers_yield_nothing():
    assert list(walk_layers("model")) == []
    assert list(walk_layers(None)) == []
    assert _names([L.Dense(1, name="listed")]) == ["listed"]


def test_package_bookkeeping_attributes_are_not_walked():
    inputs = keras.Input((4,))
    h = MCDropout(0.5, seed=0)(L.Dense(8)(inputs))
    model = keras.Model(inputs, L.Dense(2, activation="softmax")(h))
    before = _ids(model)
    mc_predict(model, np.ones((3, 4), "float32"), samples=2)
    cached = [
        name
        for name in vars(model)
        if name.startswith(_layer_walk.PRIVATE_ATTRIBUTE_PREFIX)
    ]
    assert cached, "mc_predict left no cache to test with"
    # The compiled forwards in the cache are not layers of the model.
    assert _ids(model) == before
