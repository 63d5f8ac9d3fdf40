"""Weight regularizers."""

__all__ = []
