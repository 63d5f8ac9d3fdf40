"""Tests for keras_regularize._export: public paths, aliases, registration."""

import keras
import numpy as np
import pytest

from keras_regularize import _export
from keras_regularize._export import export

# The same on every backend: the nox sessions run it once (tests(tensorflow)).
pytestmark = pytest.mark.backend_independent


@pytest.fixture
def registry():
    """Undoes what a test exports, so the package's tables stay as shipped."""
    exported = dict(_export.EXPORTED)
    aliases = dict(_export.ALIASES)
    custom = dict(keras.saving.get_custom_objects())
    yield keras.saving.get_custom_objects()
    for table, saved in (
        (_export.EXPORTED, exported),
        (_export.ALIASES, aliases),
        (keras.saving.get_custom_objects(), custom),
    ):
        table.clear()
        table.update(saved)


def scale_class(name):
    """A fresh one-weight layer class called `name`."""

    def build(self, input_shape):
        self.scale = self.add_weight(
            shape=(input_shape[-1],), initializer="ones", name="scale"
        )

    def call(self, inputs):
        return inputs * self.scale

    def get_config(self):
        return {**keras.layers.Layer.get_config(self), "factor": self.factor}

    def __init__(self, factor=1.0, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.factor = factor

    namespace = {
        "__init__": __init__,
        "build": build,
        "call": call,
        "get_config": get_config,
        "__module__": __name__,
        "__qualname__": name,
    }
    return type(name, (keras.layers.Layer,), namespace)


@pytest.mark.parametrize("form", ["list", "keyword"])
def test_alias_is_recorded_and_registered_under_the_old_name(registry, form):
    public = "keras_regularize.layers.NewScale"
    old = "keras_regularize.layers.OldScale"
    if form == "list":
        decorator = export([public, old])
    else:
        decorator = export(public, aliases=[old])
    cls = decorator(scale_class("NewScale"))
    assert _export.EXPORTED[public] is cls
    assert old not in _export.EXPORTED
    assert _export.ALIASES[old] == public
    assert registry["keras_regularize>NewScale"] is cls
    legacy = registry["keras_regularize>OldScale"]
    assert issubclass(legacy, cls) and legacy.__name__ == "OldScale"
    # Objects of the public class save under the public name.
    assert keras.saving.get_registered_name(cls) == "keras_regularize>NewScale"


def test_renamed_class_loads_a_file_saved_under_its_old_name(
    registry, tmp_path
):
    old_cls = export("keras_regularize.layers.OldScale")(
        scale_class("OldScale")
    )
    layer = old_cls(factor=2.5, name="scale")
    model = keras.Sequential([keras.Input((3,)), layer])
    layer.scale.assign(np.array([1.0, 2.0, 3.0], "float32"))
    path = tmp_path / "old.keras"
    model.save(path)

    # The release that renames the class: the old name is gone, except as an
    # alias of the new one.
    del registry["keras_regularize>OldScale"]
    del _export.EXPORTED["keras_regularize.layers.OldScale"]
    new_cls = export(
        "keras_regularize.layers.NewScale",
        aliases=["keras_regularize.layers.OldScale"],
    )(scale_class("NewScale"))

    loaded = keras.saving.load_model(path)
    restored = loaded.get_layer("scale")
    assert isinstance(restored, new_cls)
    assert restored.factor == 2.5
    # The weights too: Keras files them under the class name (`old_scale`).
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(np.ones((1, 3), "float32"))),
        [[1.0, 2.0, 3.0]],
    )
    # Saved again, the file still loads; new objects save as `NewScale`.
    loaded.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    assert again.get_layer("scale").factor == 2.5
    fresh = keras.saving.serialize_keras_object(new_cls(factor=1.0))
    assert fresh["registered_name"] == "keras_regularize>NewScale"


def test_functions_are_recorded_but_not_registered(registry):
    @export(
        "keras_regularize.layers.new_helper",
        aliases="keras_regularize.layers.old_helper",
    )
    def helper():
        return 1

    assert _export.EXPORTED["keras_regularize.layers.new_helper"] is helper
    assert (
        _export.ALIASES["keras_regularize.layers.old_helper"]
        == "keras_regularize.layers.new_helper"
    )
    assert "keras_regularize>old_helper" not in registry


@pytest.mark.parametrize(
    "path, aliases, match",
    [
        ("keras.layers.Thing", (), "path='keras.layers.Thing'"),
        (None, (), "path=None"),
        ([], (), "path=\\[\\]"),
        (
            "keras_regularize.layers.Thing",
            ["other.Thing"],
            "aliases='other.Thing'",
        ),
        (
            "keras_regularize.layers.Thing",
            ["keras_regularize.layers.Thing"],
            "must not be a public path",
        ),
        (
            "keras_regularize.layers.Thing",
            ["keras_regularize.layers.DropPath"],
            "must not be a public path",
        ),
    ],
)
def test_bad_paths_are_refused(registry, path, aliases, match):
    with pytest.raises(ValueError, match=match):
        export(path, aliases=aliases)


def test_alias_cannot_take_another_class_registered_name(registry):
    export("keras_regularize.layers.Taken")(scale_class("Taken"))
    decorator = export(
        "keras_regularize.layers.Other",
        aliases=["keras_regularize.models.Taken"],
    )
    with pytest.raises(ValueError, match="'keras_regularize>Taken'"):
        decorator(scale_class("Other"))


def test_the_same_alias_may_be_registered_again(registry):
    """A reloaded module exports its classes, and their aliases, again."""
    for _ in range(2):
        export(
            "keras_regularize.layers.NewScale",
            aliases=["keras_regularize.layers.OldScale"],
        )(scale_class("NewScale"))
    assert registry["keras_regularize>OldScale"].__name__ == "OldScale"
