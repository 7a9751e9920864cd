"""Predictors of target loss from mixture weights, all behind ``base.Predictor``."""

from moemix.mixing.predictors.base import (
    FEATURES,
    Predictor,
    featurize,
    load_predictor,
    make_predictor,
    registry,
    save_predictor,
)

PREDICTOR_NAMES = ("auto", "linear", "lightgbm", "loglinear", "dml", "gp", "scaling_law")

__all__ = ["FEATURES", "PREDICTOR_NAMES", "Predictor", "featurize", "load_predictor", "make_predictor",
           "registry", "save_predictor"]
