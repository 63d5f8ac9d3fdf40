"""The single export and registration point of keras_regularize."""

import keras

PACKAGE = "keras_regularize"

# Public path -> symbol, filled by `export` as modules are imported. The
# hygiene test walks it to check that every path resolves and is listed in its
# subpackage's `__all__`.
EXPORTED = {}

# Former public path -> current public path, for symbols renamed since an
# earlier release. Former paths need not resolve as attributes; they keep
# `.keras` files saved under the old class name loading.
ALIASES = {}


def _check_path(path, argument):
    if not isinstance(path, str) or not path.startswith(PACKAGE + "."):
        raise ValueError(
            f"Export paths must start with '{PACKAGE}.'. "
            f"Received: {argument}={path!r}"
        )
    return path


def _legacy_class(symbol, old_name, public):
    """A subclass of `symbol` named `old_name`, the class old files load.

    The name matters beyond the config: Keras files the weights of a layer
    held in a list (the layers of a model) under the snake_case name of its
    class (`layers/old_name/vars`), so an object rebuilt as `symbol` itself
    would look for its weights under the new name and not find them.
    """
    return type(
        old_name,
        (symbol,),
        {
            "__module__": symbol.__module__,
            "__qualname__": old_name,
            "__doc__": f"Former name of `{public}`, kept so that `.keras` "
            "files saved under it still load.",
            "_alias_of": public,
        },
    )


def _register_alias(symbol, alias, public):
    old_name = alias.rsplit(".", 1)[1]
    registered = f"{PACKAGE}>{old_name}"
    taken = keras.saving.get_custom_objects().get(registered)
    # The same alias may be registered again (a reloaded module), nothing else.
    if taken is not None and taken.__dict__.get("_alias_of") != public:
        raise ValueError(
            f"The alias {alias!r} of {public!r} would take the registered "
            f"name '{registered}' of {taken!r}."
        )
    legacy = _legacy_class(symbol, old_name, public)
    keras.saving.register_keras_serializable(package=PACKAGE)(legacy)


def export(path, aliases=()):
    """Records a symbol's public path and former paths, and registers it.

    Classes with a `get_config` (layers, losses, constraints, models, ...) are
    registered for saving under `"keras_regularize>ClassName"`, so `.keras`
    files load after `import keras_regularize` with no `custom_objects`.
    Callbacks and plain functions are only recorded.

    A renamed class keeps loading from files saved under its old name: list
    the old path as an alias, either with `aliases=[...]` or as the later
    entries of a list of paths (keras-hub's form). The first path is the
    public one. Each alias is recorded in `ALIASES`; for a serializable class
    it is also registered as `"keras_regularize>OldName"`, bound to a
    subclass named `OldName`, so that both the config and the weights of an
    old file (which Keras files under the class name) are found. Objects
    built in new code save under the public name.

    Args:
        path: The public path, `"keras_regularize.<subpackage>.<Name>"`, or a
            list whose first entry is the public path and whose other
            entries are aliases.
        aliases: Former paths of the symbol, in the same form.

    Example:

    ```python
    @export(
        "keras_regularize.layers.NewName",
        aliases=["keras_regularize.layers.OldName"],
    )
    class NewName(keras.layers.Layer): ...
    ```
    """
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if not paths:
        raise ValueError("`export` needs at least one path. Received: path=[]")
    public = _check_path(paths[0], "path")
    if isinstance(aliases, str):
        aliases = [aliases]
    old = [_check_path(a, "aliases") for a in [*paths[1:], *aliases]]
    for alias in old:
        if alias == public or alias in EXPORTED:
            raise ValueError(
                f"An alias must not be a public path. Received: "
                f"aliases={alias!r} for {public!r}"
            )

    def decorator(symbol):
        if isinstance(symbol, type) and hasattr(symbol, "get_config"):
            for alias in old:
                _register_alias(symbol, alias, public)
            keras.saving.register_keras_serializable(package=PACKAGE)(symbol)
        EXPORTED[public] = symbol
        for alias in old:
            ALIASES[alias] = public
        return symbol

    return decorator
