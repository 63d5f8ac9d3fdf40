"""Model wrappers: distillation, on-device mixing, Monte Carlo prediction."""

__all__ = []
