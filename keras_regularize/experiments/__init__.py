"""Experiments: ablation studies of regularization on your model and data."""

from keras_regularize.experiments.ablation_result import AblationResult
from keras_regularize.experiments.ablation_study import ablation
from keras_regularize.experiments.trial import Trial

__all__ = [
    "AblationResult",
    "Trial",
    "ablation",
]
