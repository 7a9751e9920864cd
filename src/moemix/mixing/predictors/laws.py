"""Parametric mixing laws fitted with a Huber loss from several starting points.

* ``loglinear`` (Olmix default): ``L(r) = exp(c) + exp(t·phi(r))`` — a positive floor plus an
  exponential in the mixture; the floor is the irreducible loss.
* ``dml`` (Data Mixing Laws, Ye et al.): ``L(r) = c + k·exp(t·phi(r))`` with c free and the sign of
  k tried both ways. Because the weights sum to one, |k| folds into t, so the restarts cover
  both signs and a spread of initial slopes.

A small L2 penalty on t keeps the fit well-posed when runs ≈ domains (32 runs, 17 domains).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moemix.mixing.predictors.base import Predictor, featurize, register


class _ExpLaw(Predictor):
    free_floor: bool = False
    seeded = True

    def __init__(
        self,
        features: str = "raw",
        n_restarts: int = 8,
        huber_delta: float | None = None,
        l2: float = 1e-3,
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(
            features=features, n_restarts=n_restarts, huber_delta=huber_delta, l2=l2, seed=seed, **params
        )
        self.c = 0.0
        self.sign = 1.0
        self.t: np.ndarray | None = None

    def _f(self, F: np.ndarray, c: float, sign: float, t: np.ndarray) -> np.ndarray:
        floor = c if self.free_floor else np.exp(c)
        return floor + sign * np.exp(np.clip(F @ t, -50, 50))

    def fit(self, X: np.ndarray, y: np.ndarray) -> _ExpLaw:
        from scipy.optimize import least_squares

        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self.n_features = X.shape[1]
        F = featurize(X, self.params["features"])
        y = np.asarray(y, dtype=np.float64)
        ys = float(np.std(y)) or 1.0
        ymin = float(np.min(y))
        delta = self.params["huber_delta"] or 0.5 * ys
        lam = np.sqrt(float(self.params["l2"]) * len(y)) * ys
        rng = np.random.default_rng(int(self.params["seed"]))
        signs = [1.0, -1.0] if self.free_floor else [1.0]
        best = None
        for r in range(int(self.params["n_restarts"])):
            for sign in signs:
                # start: floor just below the data; exponential part carries the spread
                if self.free_floor:
                    c0 = ymin - ys if sign > 0 else float(np.max(y)) + ys
                else:
                    c0 = np.log(max(ymin - ys, 1e-3 * max(ymin, 1e-3)))
                # raw weights sum to 1, so a constant shift log(std y) starts the exponential at the
                # data's spread; later restarts add growing random slopes
                scale = 0.0 if r == 0 else 0.1 + r / max(1, int(self.params["n_restarts"]) - 1)
                t0 = np.log(ys) + rng.normal(0, scale, F.shape[1])

                def resid(theta, sign=sign):
                    c, t = theta[0], theta[1:]
                    return np.concatenate([(self._f(F, c, sign, t) - y) / ys, lam / ys * t])

                def jac(theta, sign=sign):
                    c, t = theta[0], theta[1:]
                    e = sign * np.exp(np.clip(F @ t, -50, 50))
                    dc = np.ones(len(F)) if self.free_floor else np.full(len(F), np.exp(c))
                    top = np.column_stack([dc, e[:, None] * F]) / ys
                    bottom = np.column_stack([np.zeros(len(t)), np.eye(len(t)) * lam / ys])
                    return np.vstack([top, bottom])

                try:
                    res = least_squares(
                        resid,
                        np.concatenate([[c0], t0]),
                        jac=jac,
                        loss="huber",
                        f_scale=delta / ys,
                        max_nfev=300,
                        method="trf",
                    )
                except (ValueError, FloatingPointError):
                    continue
                if not np.all(np.isfinite(res.x)):
                    continue
                if best is None or res.cost < best[0]:
                    best = (float(res.cost), float(res.x[0]), sign, res.x[1:].copy())
        if best is None:  # cannot happen unless every start failed numerically: fall back to the mean
            self.c, self.sign, self.t = (
                (float(np.mean(y)) if self.free_floor else np.log(np.mean(y))),
                1.0,
                None,
            )
        else:
            _, self.c, self.sign, self.t = best
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self._check_X(X)
        if self.t is None:
            return np.full(len(X), self.c if self.free_floor else np.exp(self.c))
        return self._f(featurize(X, self.params["features"]), self.c, self.sign, self.t)

    def get_state(self) -> dict[str, Any]:
        return {"c": self.c, "sign": self.sign, "t": self.t}

    def set_state(self, state: dict[str, Any]) -> None:
        self.c, self.sign = float(state["c"]), float(state["sign"])
        self.t = None if state["t"] is None else np.asarray(state["t"], dtype=np.float64)

    def explain(self, domains: list[str]) -> dict[str, Any]:
        vals = {} if self.t is None else {f"t:{d}": float(v) for d, v in zip(domains, self.t)}
        floor = self.c if self.free_floor else float(np.exp(self.c))
        return {"kind": "law_parameters", "floor": floor, "sign": self.sign, "values": vals}


@register
class LogLinearLaw(_ExpLaw):
    name = "loglinear"
    free_floor = False


@register
class DMLLaw(_ExpLaw):
    name = "dml"
    free_floor = True

    def __init__(self, features: str = "raw", n_restarts: int = 16, **params: Any) -> None:
        super().__init__(features=features, n_restarts=n_restarts, **params)
