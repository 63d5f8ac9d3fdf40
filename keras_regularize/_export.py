"""The single export and registration point of keras_regularize."""

import keras

PACKAGE = "keras_regularize"

# Public path -> symbol, filled by `export` as modules are imported. The
# hygiene test walks it to check that every path resolves and is listed in its
# subpackage's `__all__`.
EXPORTED = {}


def export(path):
    """Records `path` as the public name of a symbol and registers it.

    Classes with a `get_config` (layers, losses, constraints, models, ...) are
    registered for saving under `"keras_regularize>ClassName"`, so `.keras`
    files load after `import keras_regularize` with no `custom_objects`.
    Callbacks and plain functions are only recorded.
    """
    if not path.startswith(PACKAGE + "."):
        raise ValueError(
            f"Export paths must start with '{PACKAGE}.'. Received: path={path}"
        )

    def decorator(symbol):
        if isinstance(symbol, type) and hasattr(symbol, "get_config"):
            keras.saving.register_keras_serializable(package=PACKAGE)(symbol)
        EXPORTED[path] = symbol
        return symbol

    return decorator
