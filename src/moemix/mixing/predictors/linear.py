"""Bayesian ridge on (transformed) mixture weights: the small-n workhorse, with a predictive std."""

from __future__ import annotations

from typing import Any

import numpy as np

from moemix.mixing.predictors.base import Predictor, featurize, register


@register
class LinearPredictor(Predictor):
    """``y ~ b + c·phi(w)`` fitted by sklearn's BayesianRidge (evidence-tuned L2, so no CV inside).

    ``features="raw"`` is the RegMix linear baseline; ``"sqrt"`` is usually far better at small n.
    """

    name = "linear"

    def __init__(self, features: str = "raw", **params: Any) -> None:
        super().__init__(features=features, **params)
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.sigma: np.ndarray | None = None
        self.alpha = 1.0
        self.x_offset: np.ndarray | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearPredictor:
        from sklearn.linear_model import BayesianRidge

        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self.n_features = X.shape[1]
        F = featurize(X, self.params["features"])
        m = BayesianRidge(max_iter=500).fit(F, np.asarray(y, dtype=np.float64))
        self.coef, self.intercept = m.coef_.copy(), float(m.intercept_)
        self.sigma, self.alpha, self.x_offset = m.sigma_.copy(), float(m.alpha_), m.X_offset_.copy()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_std(X)[0]

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        F = featurize(self._check_X(X), self.params["features"])
        mean = F @ self.coef + self.intercept
        Fc = F - self.x_offset
        var = np.einsum("ij,jk,ik->i", Fc, self.sigma, Fc) + 1.0 / self.alpha
        return mean, np.sqrt(np.maximum(var, 0.0))

    def get_state(self) -> dict[str, Any]:
        return {
            "coef": self.coef,
            "intercept": self.intercept,
            "sigma": self.sigma,
            "alpha": self.alpha,
            "x_offset": self.x_offset,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.coef = np.asarray(state["coef"], dtype=np.float64)
        self.intercept = float(state["intercept"])
        self.sigma = np.asarray(state["sigma"], dtype=np.float64)
        self.alpha = float(state["alpha"])
        self.x_offset = np.asarray(state["x_offset"], dtype=np.float64)

    def explain(self, domains: list[str]) -> dict[str, Any]:
        feats = self.params["features"]
        names = list(domains)
        if feats == "rawlog":
            names = [f"w:{d}" for d in domains] + [f"log:{d}" for d in domains]
        elif feats == "rawsqrt":
            names = [f"w:{d}" for d in domains] + [f"sqrt:{d}" for d in domains]
        elif feats != "raw":
            names = [f"{feats}:{d}" for d in domains]
        return {
            "kind": "coefficients",
            "intercept": self.intercept,
            "values": dict(zip(names, map(float, self.coef))),
        }
