"""``auto``: choose and ensemble predictors by K-fold CV on the training runs only.

Why an ensemble picked greedily on out-of-fold (OOF) Spearman (Caruana et al. 2004): no single
model wins at every n (sqrt-ridge at 32 runs, GPs and trees at 512), and averaging models whose
errors differ improves ranking. Everything is decided from OOF predictions on the training
runs; a test split is never seen. The OOF score of the chosen ensemble is slightly optimistic
(the choice was made on it); ``nested_cv`` in ``fit_runs`` measures it honestly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moemix.errors import MoemixError
from moemix.mixing.metrics import kfold_indices, spearman
from moemix.mixing.predictors.base import Predictor, blas_threads, from_dict, make_predictor, register


def default_candidates(n: int, seed: int = 0) -> list[dict[str, Any]]:
    cands: list[dict[str, Any]] = [
        {"name": "linear", "features": "raw"},
        {"name": "linear", "features": "sqrt"},
        {"name": "linear", "features": "rawlog"},
        {"name": "linear", "features": "log"},
        {"name": "gp", "features": "sqrt", "n_restarts": 0 if n > 200 else 1, "seed": seed},
        {"name": "gp", "features": "rawlog", "n_restarts": 0 if n > 200 else 1, "seed": seed},
        {"name": "loglinear", "features": "raw", "n_restarts": 4, "seed": seed},
        {"name": "loglinear", "features": "sqrt", "n_restarts": 4, "seed": seed},
        {"name": "dml", "features": "raw", "n_restarts": 4, "seed": seed},
    ]
    if n >= 24:  # below this a tree ensemble cannot even split sensibly inside a CV fold
        cands.append({"name": "lightgbm", "seed": seed})
    return cands


def _label(spec: dict[str, Any]) -> str:
    extra = f"({spec['features']})" if "features" in spec else ""
    return f"{spec['name']}{extra}"


def cross_val_predict(
    spec: dict[str, Any], X: np.ndarray, y: np.ndarray, folds: list[np.ndarray]
) -> np.ndarray:
    oof = np.empty(len(y))
    all_idx = np.arange(len(y))
    for test in folds:
        train = np.setdiff1d(all_idx, test)
        params = {k: v for k, v in spec.items() if k != "name"}
        m = make_predictor(spec["name"], **params).fit(X[train], y[train])
        oof[test] = m.predict(X[test])
    return oof


def greedy_ensemble(oof: np.ndarray, y: np.ndarray, max_steps: int = 12) -> np.ndarray:
    """Caruana forward selection with replacement on OOF Spearman; returns member weights."""
    k = oof.shape[1]
    scores = np.array([spearman(oof[:, j], y) or -1.0 for j in range(k)])
    counts = np.zeros(k)
    counts[int(np.argmax(scores))] = 1
    best = float(scores.max())
    for _ in range(max_steps - 1):
        trial = []
        for j in range(k):
            c = counts.copy()
            c[j] += 1
            trial.append(spearman(oof @ (c / c.sum()), y) or -1.0)
        j = int(np.argmax(trial))
        if trial[j] <= best + 1e-5:
            break
        counts[j] += 1
        best = trial[j]
    return counts / counts.sum()


@register
class AutoPredictor(Predictor):
    name = "auto"
    seeded = True

    def __init__(
        self,
        cv_folds: int = 5,
        seed: int = 0,
        candidates: list[dict[str, Any]] | None = None,
        mode: str = "ensemble",
        **params: Any,
    ) -> None:
        if mode not in ("ensemble", "best"):
            raise MoemixError(f"auto: mode must be 'ensemble' or 'best', got {mode!r}")
        super().__init__(cv_folds=cv_folds, seed=seed, candidates=candidates, mode=mode, **params)
        self.members: list[Predictor] = []
        self.weights: np.ndarray = np.zeros(0)
        self.cv_table: list[dict[str, Any]] = []
        self.oof: np.ndarray | None = None

    @property
    def smooth_members(self) -> bool:
        return all(m.smooth for m in self.members)

    def fit(self, X: np.ndarray, y: np.ndarray) -> AutoPredictor:
        with blas_threads(1):
            return self._fit(X, y)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> AutoPredictor:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        y = np.asarray(y, dtype=np.float64)
        self.n_features = X.shape[1]
        n = len(y)
        specs = self.params["candidates"] or default_candidates(n, int(self.params["seed"]))
        folds = kfold_indices(n, int(self.params["cv_folds"]), int(self.params["seed"]))
        oofs, table = [], []
        for spec in specs:
            oof = cross_val_predict(spec, X, y, folds)
            oofs.append(oof)
            table.append(
                {
                    "candidate": _label(spec),
                    "spec": spec,
                    "cv_spearman": spearman(oof, y),
                    "cv_mae": float(np.mean(np.abs(oof - y))),
                }
            )
        oof_mat = np.column_stack(oofs)
        if self.params["mode"] == "best":
            w = np.zeros(len(specs))
            w[int(np.argmax([t["cv_spearman"] or -1.0 for t in table]))] = 1.0
        else:
            w = greedy_ensemble(oof_mat, y)
        keep = np.nonzero(w > 0)[0]
        self.members = []
        for j in keep:
            params = {k: v for k, v in specs[j].items() if k != "name"}
            self.members.append(make_predictor(specs[j]["name"], **params).fit(X, y))
        self.weights = w[keep]
        self.oof = oof_mat[:, keep] @ self.weights
        for j, t in enumerate(table):
            t["weight"] = float(w[j])
        self.cv_table = table
        return self

    @property
    def smooth(self) -> bool:  # type: ignore[override]
        return self.smooth_members

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self._check_X(X)
        return np.column_stack([m.predict(X) for m in self.members]) @ self.weights

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Mixture-of-members std: within-member variance (where known) + between-member spread."""
        X = self._check_X(X)
        outs = [m.predict_with_std(X) for m in self.members]
        mus = np.column_stack([o[0] for o in outs])
        mean = mus @ self.weights
        between = ((mus - mean[:, None]) ** 2) @ self.weights
        stds = [o[1] for o in outs]
        if all(s is None for s in stds) and len(self.members) == 1:
            return mean, None
        within = np.zeros(len(X))
        for w, s in zip(self.weights, stds):
            if s is not None:
                within += w * s**2
        return mean, np.sqrt(within + between)

    def get_state(self) -> dict[str, Any]:
        return {
            "members": [m.to_dict() for m in self.members],
            "weights": self.weights,
            "cv_table": self.cv_table,
            "oof": self.oof,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.members = [from_dict(m) for m in state["members"]]
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.cv_table = state.get("cv_table", [])
        self.oof = None if state.get("oof") is None else np.asarray(state["oof"], dtype=np.float64)

    def explain(self, domains: list[str]) -> dict[str, Any]:
        return {
            "kind": "ensemble",
            "members": [
                {"predictor": m.label, "weight": float(w), **m.explain(domains)}
                for m, w in zip(self.members, self.weights)
            ],
            "candidates": [{k: v for k, v in t.items() if k != "spec"} for t in self.cv_table],
        }


@register
class WeightedSumPredictor(Predictor):
    """Sum of per-column predictors (target mode "separate"): each loss column fitted on its own."""

    name = "weighted_sum"
    selectable = False

    def __init__(
        self, columns: list[str] | None = None, coefs: list[float] | None = None, **params: Any
    ) -> None:
        super().__init__(columns=list(columns or []), coefs=list(coefs or []), **params)
        self.members: list[Predictor] = []

    @property
    def smooth(self) -> bool:  # type: ignore[override]
        return all(m.smooth for m in self.members)

    def fit(self, X: np.ndarray, y: np.ndarray) -> WeightedSumPredictor:
        raise NotImplementedError("fit members separately and pass them to with_members()")

    def with_members(self, members: list[Predictor]) -> WeightedSumPredictor:
        self.members = members
        self.n_features = members[0].n_features if members else None
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_std(X)[0]

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        X = self._check_X(X)
        c = np.asarray(self.params["coefs"], dtype=np.float64)
        outs = [m.predict_with_std(X) for m in self.members]
        mean = sum(ci * o[0] for ci, o in zip(c, outs))
        if any(o[1] is None for o in outs):
            return mean, None
        # members are fitted independently: variances add
        return mean, np.sqrt(sum((ci * o[1]) ** 2 for ci, o in zip(c, outs)))

    def get_state(self) -> dict[str, Any]:
        return {"members": [m.to_dict() for m in self.members]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.members = [from_dict(m) for m in state["members"]]

    def explain(self, domains: list[str]) -> dict[str, Any]:
        return {
            "kind": "per_column",
            "members": {col: m.explain(domains) for col, m in zip(self.params["columns"], self.members)},
        }
