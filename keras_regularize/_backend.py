"""The only module allowed to import a framework directly (lazily).

Library code is written with `keras`, `keras.ops` and `keras.random`; a
backend-specific fast path, if one is ever needed, goes here behind a function
keyed on `keras.config.backend()` and imports its framework inside that
function.
"""
