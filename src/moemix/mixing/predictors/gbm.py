"""LightGBM on raw weights (the RegMix predictor), with data settings that work at tiny n."""

from __future__ import annotations

from typing import Any

import numpy as np

from moemix.mixing.predictors.base import Predictor, register


@register
class LightGBMPredictor(Predictor):
    """RegMix: 1000 iterations, lr 0.01. ``min_data_in_leaf="auto"`` scales with n because the
    LightGBM default (20) makes a constant model below ~40 runs; ``regmix=True`` keeps LightGBM's
    defaults for an exact baseline. One thread by default: on a few hundred rows, thread
    synchronisation costs ~10x the work on a busy 2-core machine (measured)."""

    name = "lightgbm"
    smooth = False
    seeded = True

    def __init__(
        self,
        n_estimators: int = 1000,
        learning_rate: float = 0.01,
        num_leaves: int = 31,
        min_data_in_leaf: int | str = "auto",
        num_threads: int = 1,
        seed: int = 0,
        regmix: bool = False,
        **params: Any,
    ) -> None:
        super().__init__(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            min_data_in_leaf=min_data_in_leaf,
            num_threads=min(int(num_threads), 2),
            seed=seed,
            regmix=regmix,
            **params,
        )
        self.booster = None

    def _lgb_params(self, n: int) -> dict[str, Any]:
        p = self.params
        out: dict[str, Any] = {
            "objective": "regression",
            "learning_rate": p["learning_rate"],
            "verbosity": -1,
            "num_threads": p["num_threads"],
            "seed": p["seed"],
            "deterministic": True,
            "force_row_wise": True,
        }
        if not p["regmix"]:
            mdl = p["min_data_in_leaf"]
            if mdl == "auto":
                mdl = int(max(2, min(20, n // 8)))
            out.update(num_leaves=p["num_leaves"], min_data_in_leaf=int(mdl), min_data_in_bin=1)
        return out

    def fit(self, X: np.ndarray, y: np.ndarray) -> LightGBMPredictor:
        import lightgbm as lgb

        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self.n_features = X.shape[1]
        ds = lgb.Dataset(
            X,
            label=np.asarray(y, dtype=np.float64),
            params={"verbosity": -1, "min_data_in_bin": 1 if not self.params["regmix"] else 3},
        )
        self.booster = lgb.train(
            self._lgb_params(len(X)), ds, num_boost_round=int(self.params["n_estimators"])
        )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.booster.predict(self._check_X(X), num_threads=self.params["num_threads"]), dtype=np.float64
        )

    def get_state(self) -> dict[str, Any]:
        return {"model": self.booster.model_to_string()}

    def set_state(self, state: dict[str, Any]) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_str=state["model"])

    def explain(self, domains: list[str]) -> dict[str, Any]:
        gain = self.booster.feature_importance(importance_type="gain")
        total = float(gain.sum()) or 1.0
        return {
            "kind": "feature_importance_gain",
            "values": {d: float(g) / total for d, g in zip(domains, gain)},
        }
