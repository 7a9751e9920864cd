"""Predictors of target loss from mixture weights, all behind ``base.Predictor``."""

from moemix.mixing.predictors.base import (
    FEATURES,
    Predictor,
    featurize,
    load_predictor,
    make_predictor,
    predictor_class,
    registry,
    save_predictor,
)

# what ``fit.predictor`` accepts, read off the registry (``base.register``, ``base._MODULES``)
PREDICTOR_NAMES = tuple(name for name, cls in registry().items() if cls.selectable)

__all__ = [
    "FEATURES",
    "PREDICTOR_NAMES",
    "Predictor",
    "featurize",
    "load_predictor",
    "make_predictor",
    "predictor_class",
    "registry",
    "save_predictor",
]
