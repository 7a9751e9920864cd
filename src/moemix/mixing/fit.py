"""Fit step (Olmix-style: fit and propose are separate, swappable steps).

``fit_runs`` writes a self-contained fit directory:
  predictor.json  the fitted predictor (plain JSON, no pickle)
  cv.json         K-fold CV metrics (Spearman / Pearson / MAE), skipped-row counts, candidates (auto)
  explain.json    coefficients / feature importances / ensemble members
  plots/pred_vs_actual.png
  fit.json        domains, weight columns, target, prior; written LAST (marks the directory complete)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moemix._io import write_json_atomic
from moemix.errors import MoemixError, check_config
from moemix.mixing.config import FitConfig
from moemix.mixing.metrics import all_metrics, kfold_indices
from moemix.mixing.predictors import (
    Predictor,
    load_predictor,
    make_predictor,
    predictor_class,
    save_predictor,
)
from moemix.mixing.predictors.auto import AutoPredictor, WeightedSumPredictor
from moemix.mixing.predictors.base import one_blas_thread
from moemix.mixing.predictors.scaling import CurvePoints
from moemix.mixing.runs import PreparedRuns, TargetSpec, parse_target, prepare_runs

# bumped when the fitting code changes what a fit directory holds: the fit stage's key includes it
FIT_FORMAT = 2


@dataclass
class FitResult:
    predictor: Predictor
    domains: list[str]
    weight_cols: list[str]
    target: TargetSpec
    cv: dict[str, Any]
    prior: list[float] | None = None
    prior_source: str = "uniform"
    domain_tokens: list[int] | None = None
    n_rows: int = 0
    n_used: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # base-vs-large proxy ranking agreement (moemix.mixing.transfer), when the runs had large rows
    scale_transfer: dict[str, Any] | None = None
    # lowest observed target among the fitted runs (to flag proposals that extrapolate below it)
    best_observed: float | None = None
    # largest weight any fitted run gave each domain: the edge of the explored region
    observed_max_weight: list[float] | None = None
    # every fitted run's mixture (rows), for the lower side of the trust region
    observed_weights: list[list[float]] | None = None
    # the same mixture trained under several seeds: {"std", "range", "n", "mean"} of its target
    seed_noise: dict[str, Any] | None = None

    @property
    def cv_spearman(self) -> float | None:
        return self.cv.get("spearman")

    @property
    def n_failed(self) -> int:
        return int(self.skipped.get("failed", 0))

    def target_weights(self) -> np.ndarray | None:
        """How much the target weighs each domain (its coefficients on ``loss/<domain>`` columns, summing
        to 1), or None when it is not a weighted sum of domain losses (an external evaluation)."""
        w = np.zeros(len(self.domains))
        for col, coef in zip(self.target.columns, self.target.coefs):
            wcol = "w/" + col[len("loss/") :] if col.startswith("loss/") else None
            if wcol not in self.weight_cols or coef < 0:
                return None
            w[self.weight_cols.index(wcol)] += coef
        return w / w.sum() if w.sum() > 0 else None

    def prior_array(self) -> np.ndarray:
        """Natural prior stored at fit time (given, else training-mixture mean), else uniform."""
        if self.prior is not None:
            return np.asarray(self.prior, dtype=np.float64)
        return np.full(len(self.domains), 1.0 / len(self.domains))


def _params(cfg: FitConfig, name: str) -> dict[str, Any]:
    p = dict(cfg.predictor_params)
    if name == "auto":
        p.setdefault("cv_folds", cfg.cv_folds)
    if predictor_class(name).seeded:
        p.setdefault("seed", cfg.seed)
    return p


def _fit_one(name: str, cfg: FitConfig, X: np.ndarray, y: np.ndarray) -> Predictor:
    return make_predictor(name, **_params(cfg, name)).fit(X, y)


@dataclass
class RunCurves:
    """The proxies' loss curves for the target's columns (``runs.target.columns`` order).

    ``own[k]`` is the weight column of the domain that component k is the validation loss of (None
    for an external target); ``groups`` maps each point to its run's row in the prepared runs.
    """

    points: CurvePoints
    own: list[int | None]
    budget: float = 1.0  # the proxies' training tokens: scale 1

    def rows(self, rows: np.ndarray) -> RunCurves:
        keep = np.isin(self.points.groups, rows)
        return RunCurves(self.points.subset(keep), self.own, self.budget)


def _fit_target(
    cfg: FitConfig, runs: PreparedRuns, curves: RunCurves | None = None, uncertainty: bool = True
) -> Predictor:
    if cfg.predictor == "scaling_law":
        params = _params(cfg, cfg.predictor)
        if not uncertainty:  # CV folds score the point prediction; their bootstrap would be wasted
            params["bootstrap"] = 0
        pred = make_predictor(cfg.predictor, **params)
        if curves is None:
            return pred.fit(runs.X, runs.y)
        return pred.fit_curves(curves.points, curves.own, list(runs.target.coefs), list(runs.target.columns))
    if runs.target.mode == "separate" and len(runs.target.columns) > 1:
        members = [_fit_one(cfg.predictor, cfg, runs.X, runs.Y[:, i]) for i in range(runs.Y.shape[1])]
        return WeightedSumPredictor(columns=runs.target.columns, coefs=runs.target.coefs).with_members(
            members
        )
    return _fit_one(cfg.predictor, cfg, runs.X, runs.y)


def _cross_validate(
    cfg: FitConfig, runs: PreparedRuns, fitted: Predictor, curves: RunCurves | None = None
) -> tuple[np.ndarray, str]:
    """Out-of-fold predictions of the whole fitting procedure.

    For ``auto`` (combined target, no nested_cv) the OOF predictions of the selected ensemble are
    reused: that costs nothing extra but is mildly optimistic because selection looked at them.
    """
    if isinstance(fitted, AutoPredictor) and not cfg.nested_cv and fitted.oof is not None:
        return fitted.oof, "oof_of_selected_ensemble"
    if (
        isinstance(fitted, WeightedSumPredictor)
        and not cfg.nested_cv
        and fitted.members
        and all(isinstance(m, AutoPredictor) and m.oof is not None for m in fitted.members)
    ):
        # every member used the same folds (same n and seed), so their weighted OOF sum is the
        # OOF prediction of the combined target
        coefs = np.asarray(fitted.params["coefs"], dtype=np.float64)
        return sum(c * m.oof for c, m in zip(coefs, fitted.members)), "oof_of_selected_ensemble"
    folds = _mixture_folds(runs.X, cfg.cv_folds, cfg.seed + 1)
    oof = np.empty(runs.n_used)
    idx = np.arange(runs.n_used)
    for test in folds:
        train = np.setdiff1d(idx, test)
        sub = PreparedRuns(
            X=runs.X[train],
            Y=runs.Y[train],
            y=runs.y[train],
            domains=runs.domains,
            weight_cols=runs.weight_cols,
            target=runs.target,
            n_rows=len(train),
            skipped={},
        )
        model = _fit_target(cfg, sub, None if curves is None else curves.rows(train), uncertainty=False)
        if hasattr(model, "at_scale"):
            model = model.at_scale(1.0)  # held-out runs are proxies: predict at the proxies' budget
        oof[test] = model.predict(runs.X[test])
    return oof, ("nested" if cfg.predictor == "auto" else "kfold")


def _mixture_folds(X: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """K folds over distinct mixtures: runs of one mixture under several seeds share a fold, so a
    held-out mixture is really unseen."""
    _, first, inverse = np.unique(np.round(X, 9), axis=0, return_index=True, return_inverse=True)
    # groups numbered in order of first appearance: a table without repeats gets plain row folds
    order = np.empty(len(first), dtype=np.int64)
    order[np.argsort(first)] = np.arange(len(first))
    group = order[np.asarray(inverse).reshape(-1)]
    folds = kfold_indices(int(group.max()) + 1, k, seed)
    return [np.flatnonzero(np.isin(group, f)) for f in folds]


@one_blas_thread
def fit_prepared(
    runs: PreparedRuns,
    cfg: FitConfig,
    out_dir: str | Path,
    prior: np.ndarray | None = None,
    domain_tokens: np.ndarray | None = None,
    scale_transfer: dict[str, Any] | None = None,
    curves: RunCurves | None = None,
    seed_noise: dict[str, Any] | None = None,
    size_check: SizeCheck | None = None,
) -> FitResult:
    """``fit_runs`` on an already prepared runs table (same files, same result). ``curves`` gives the
    ``scaling_law`` predictor the proxies' loss curves, ``size_check`` the larger proxies' curves for its
    model-size extrapolation; ``seed_noise`` (``seed_noise()``) is recorded for the proposer's guard."""
    check_config(cfg, "fit config")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    predictor = _fit_target(cfg, runs, curves)
    if size_check is not None and curves is not None:
        _calibrate_size(predictor, size_check, runs, curves)
    fit_s = time.perf_counter() - t0
    oof, cv_kind = _cross_validate(cfg, runs, predictor, curves)
    metrics = all_metrics(oof, runs.y)
    metrics["rmse"] = float(np.sqrt(np.mean((oof - runs.y) ** 2)))
    cv: dict[str, Any] = {
        **metrics,
        "kind": cv_kind,
        "folds": min(cfg.cv_folds, runs.n_used),
        "n": runs.n_used,
        "n_rows": runs.n_rows,
        "skipped": runs.skipped,
        "predictor": predictor.label,
        "fit_seconds": round(fit_s, 3),
        "target": runs.target.name,
    }
    if isinstance(predictor, AutoPredictor):
        cv["candidates"] = [{k: v for k, v in t.items() if k != "spec"} for t in predictor.cv_table]
    cv["oof"] = {"actual": runs.y, "predicted": oof}

    if prior is not None:
        p = np.asarray(prior, dtype=np.float64)
        if p.shape != (len(runs.domains),) or (p < 0).any() or p.sum() <= 0:
            raise MoemixError(f"prior: expected {len(runs.domains)} non-negative weights")
        prior_list, prior_source = (p / p.sum()).tolist(), "given"
    else:
        prior_list, prior_source = runs.X.mean(axis=0).tolist(), "training_mean"

    save_predictor(predictor, out_dir / "predictor.json")
    write_json_atomic(out_dir / "cv.json", cv)
    write_json_atomic(out_dir / "explain.json", predictor.explain(runs.domains))
    plots: dict[str, str] = {}
    if cfg.plots:
        from moemix.mixing.report import plot_pred_vs_actual

        plot_pred_vs_actual(
            runs.y,
            oof,
            out_dir / "plots" / "pred_vs_actual.png",
            f"{predictor.label} on {runs.target.name} ({cv_kind})",
            {k: v for k, v in metrics.items() if v is not None},
        )
        plots["pred_vs_actual"] = "plots/pred_vs_actual.png"
    from dataclasses import asdict

    meta = {
        "format": FIT_FORMAT,
        "domains": runs.domains,
        "weight_cols": runs.weight_cols,
        "target": asdict(runs.target),
        "prior": prior_list,
        "prior_source": prior_source,
        "domain_tokens": None if domain_tokens is None else [int(t) for t in np.asarray(domain_tokens)],
        "n_rows": runs.n_rows,
        "n_used": runs.n_used,
        "skipped": runs.skipped,
        "plots": plots,
        "scale_transfer": scale_transfer,
        "best_observed": float(np.min(runs.y)),
        "observed_max_weight": [float(v) for v in runs.X.max(axis=0)],
        "config": asdict(cfg),
        "observed_weights": runs.X.tolist(),
        "seed_noise": seed_noise,
    }
    write_json_atomic(out_dir / "fit.json", meta)
    return load_fit(out_dir, predictor=predictor)


def fit_runs(
    runs: pd.DataFrame,
    target: str,
    weight_cols: list[str],
    cfg: FitConfig,
    out_dir: str | Path,
    prior: np.ndarray | None = None,
    domain_tokens: np.ndarray | None = None,
    where: str = "runs",
    curves: pd.DataFrame | None = None,
    seed_noise: dict[str, Any] | None = None,
    size_check: SizeCheck | None = None,
) -> FitResult:
    """Fit ``cfg.predictor`` to a runs table; save predictor, cv.json, explain.json and plots in ``out_dir``.

    ``target`` is a column, ``COL1:0.5,COL2:0.5`` or ``PREFIX*`` (see ``runs.parse_target``).
    ``curves`` (the swarm's ``curves.parquet``) gives ``scaling_law`` every run's loss curve.
    """
    spec = parse_target(target, [str(c) for c in runs.columns], cfg.target_mode, where)
    prepared = prepare_runs(runs, spec, weight_cols, where, cfg.weight_sum_tol, cfg.weights_prefix)
    run_curves = None
    if curves is not None and cfg.predictor == "scaling_law":
        run_curves = curve_points(curves, prepared, where)
    from moemix.mixing.transfer import scale_transfer

    combined = runs[
        weight_cols
        + (["scale"] if "scale" in runs.columns else [])
        + (["status"] if "status" in runs.columns else [])
    ].copy()
    combined["__target__"] = runs[spec.columns].to_numpy(dtype=np.float64) @ np.asarray(spec.coefs)
    st = scale_transfer(combined, "__target__", weight_cols)
    return fit_prepared(
        prepared,
        cfg,
        out_dir,
        prior,
        domain_tokens,
        st,
        run_curves,
        seed_noise,
        size_check if run_curves is not None else None,
    )


def curve_points(curves: pd.DataFrame, runs: PreparedRuns, where: str = "curves") -> RunCurves:
    """The curve rows of the prepared runs, with training tokens relative to the proxies' budget."""
    if runs.run_ids is None:
        raise MoemixError(f"{where}: the runs table has no run_id column to match the curves on")
    missing = [
        c for c in [*runs.weight_cols, *runs.target.columns, "run_id", "tokens"] if c not in curves.columns
    ]
    if missing:
        raise MoemixError(f"{where}: curves table has no column {missing[0]!r}")
    row_of = {rid: i for i, rid in enumerate(runs.run_ids)}
    sub = curves[curves["run_id"].astype(str).isin(row_of)]
    groups = sub["run_id"].astype(str).map(row_of).to_numpy(dtype=np.int64)
    if len(np.unique(groups)) < len(row_of):
        raise MoemixError(f"{where}: {len(row_of) - len(np.unique(groups))} fitted runs have no curve")
    budget = float(sub.groupby("run_id")["tokens"].max().median())
    own = [
        runs.weight_cols.index("w/" + c[len("loss/") :])
        if c.startswith("loss/") and "w/" + c[len("loss/") :] in runs.weight_cols
        else None
        for c in runs.target.columns
    ]
    return RunCurves(points=_points(sub, runs, budget, groups), own=own, budget=budget)


def _points(sub: pd.DataFrame, runs: PreparedRuns, budget: float, groups: np.ndarray) -> CurvePoints:
    W = sub[runs.weight_cols].to_numpy(dtype=np.float64)
    return CurvePoints(
        W=W / W.sum(axis=1, keepdims=True),
        scale=sub["tokens"].to_numpy(dtype=np.float64) / budget,
        losses=sub[runs.target.columns].to_numpy(dtype=np.float64),
        groups=groups,
    )


@dataclass
class SizeCheck:
    """Curves of the scale check's larger proxy and its active-parameter ratio to the base proxy."""

    curves: pd.DataFrame
    params_ratio: float


def _calibrate_size(predictor: Predictor, check: SizeCheck, runs: PreparedRuns, curves: RunCurves) -> None:
    if not hasattr(predictor, "calibrate_size") or check.curves.empty:
        return
    pts = _points(check.curves, runs, curves.budget, np.zeros(len(check.curves), dtype=np.int64))
    predictor.calibrate_size(pts, check.params_ratio)


def load_fit(out_dir: str | Path, predictor: Predictor | None = None) -> FitResult:
    out_dir = Path(out_dir)
    meta_path = out_dir / "fit.json"
    try:
        meta = json.loads(meta_path.read_text())
        cv = json.loads((out_dir / "cv.json").read_text())
    except FileNotFoundError as e:
        raise MoemixError(
            f"{out_dir}: not a complete fit directory ({Path(e.filename).name} missing)"
        ) from None
    except json.JSONDecodeError as e:
        raise MoemixError(f"{out_dir}: corrupt fit metadata ({e.msg})") from None
    try:
        if predictor is None:
            predictor = load_predictor(out_dir / "predictor.json")
        cv.pop("oof", None)
        return FitResult(
            predictor=predictor,
            domains=list(meta["domains"]),
            weight_cols=list(meta["weight_cols"]),
            target=TargetSpec(**meta["target"]),
            cv=cv,
            prior=meta.get("prior"),
            prior_source=meta.get("prior_source", "uniform"),
            domain_tokens=meta.get("domain_tokens"),
            n_rows=int(meta["n_rows"]),
            n_used=int(meta["n_used"]),
            skipped=dict(meta.get("skipped", {})),
            plots=dict(meta.get("plots", {})),
            out_dir=out_dir,
            config=dict(meta.get("config", {})),
            scale_transfer=meta.get("scale_transfer"),
            best_observed=meta.get("best_observed"),
            observed_max_weight=meta.get("observed_max_weight"),
            observed_weights=meta.get("observed_weights"),
            seed_noise=meta.get("seed_noise"),
        )
    except (KeyError, TypeError) as e:
        raise MoemixError(f"{meta_path}: malformed fit metadata (key {e})") from None


def seed_noise(targets: np.ndarray) -> dict[str, Any] | None:
    """Spread of one mixture's target across training seeds (None with fewer than two seeds)."""
    t = np.asarray(targets, dtype=np.float64)
    t = t[np.isfinite(t)]
    if len(t) < 2:
        return None
    return {
        "n": int(len(t)),
        "mean": float(t.mean()),
        "std": float(t.std(ddof=1)),
        "range": float(t.max() - t.min()),
    }
