"""Losses."""

from keras_regularize.losses.distillation_loss import DistillationLoss

__all__ = ["DistillationLoss"]
