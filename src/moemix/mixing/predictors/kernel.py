"""Gaussian-process regression on transformed weights: smooth, non-linear, calibrated std.

Saved as training data + fitted kernel hyper-parameters; loading refits with the optimiser off,
which is exact and cheap (one Cholesky) and keeps the file plain JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moemix.mixing.predictors.base import Predictor, blas_threads, featurize, register


def _kernel(n_dims: int):
    from sklearn.gaussian_process.kernels import RBF, WhiteKernel
    from sklearn.gaussian_process.kernels import ConstantKernel as C

    return C(1.0, (1e-3, 1e3)) * RBF(1.0, (1e-2, 1e3)) + WhiteKernel(1e-2, (1e-6, 1.0))


@register
class GPPredictor(Predictor):
    name = "gp"
    seeded = True

    def __init__(self, features: str = "sqrt", n_restarts: int = 1, seed: int = 0, **params: Any) -> None:
        super().__init__(features=features, n_restarts=n_restarts, seed=seed, **params)
        self.model = None
        self.theta: np.ndarray | None = None
        self.F: np.ndarray | None = None
        self.y: np.ndarray | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> GPPredictor:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self.n_features = X.shape[1]
        self.F = featurize(X, self.params["features"])
        self.y = np.asarray(y, dtype=np.float64)
        gp = GaussianProcessRegressor(
            _kernel(self.F.shape[1]),
            normalize_y=True,
            n_restarts_optimizer=int(self.params["n_restarts"]),
            random_state=int(self.params["seed"]),
        )
        with warnings.catch_warnings(), blas_threads(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(self.F, self.y)
        self.model, self.theta = gp, gp.kernel_.theta.copy()
        return self

    def _rebuild(self) -> None:
        from sklearn.gaussian_process import GaussianProcessRegressor

        k = _kernel(self.F.shape[1]).clone_with_theta(self.theta)
        self.model = GaussianProcessRegressor(k, normalize_y=True, optimizer=None).fit(self.F, self.y)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_std(X)[0]

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            self._rebuild()
        F = featurize(self._check_X(X), self.params["features"])
        mean, std = self.model.predict(F, return_std=True)
        return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    def get_state(self) -> dict[str, Any]:
        return {"theta": self.theta, "F": self.F, "y": self.y}

    def set_state(self, state: dict[str, Any]) -> None:
        self.theta = np.asarray(state["theta"], dtype=np.float64)
        self.F = np.asarray(state["F"], dtype=np.float64)
        self.y = np.asarray(state["y"], dtype=np.float64)
        self.model = None

    def explain(self, domains: list[str]) -> dict[str, Any]:
        k = self.model.kernel_ if self.model is not None and hasattr(self.model, "kernel_") else None
        return {
            "kind": "kernel",
            "kernel": str(k) if k is not None else None,
            "log_theta": [float(t) for t in self.theta],
        }
