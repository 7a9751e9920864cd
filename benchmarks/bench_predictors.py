"""Predictor ranking quality on RegMix's released 1M-parameter proxy runs (17 Pile domains).

Fit each predictor on the first n of the 512 training runs, report Spearman / Pearson / MAE on
the 256 held-out test runs. ``auto`` selects and ensembles by K-fold CV on the n training runs
only; the test split is used for reporting, never for selection. Optionally repeats on disjoint
n-run subsets (robustness), and proposes a mixture from the 512-run auto fit.

Prints one JSON object per line. Usage:
    .venv/bin/python benchmarks/bench_predictors.py [--ns 32,64,128,512] [--subsets 4] [--propose]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moemix.mixing.metrics import all_metrics
from moemix.mixing.predictors import make_predictor
from moemix.mixing.predictors.base import blas_threads

TARGET = "metric/the_pile_pile_cc_val_loss"
PRIOR = {
    "arxiv": 0.1133,
    "freelaw": 0.0796,
    "nih_exporter": 0.0039,
    "pubmed_central": 0.1854,
    "wikipedia_en": 0.0511,
    "dm_mathematics": 0.0160,
    "github": 0.1018,
    "philpapers": 0.0037,
    "stackexchange": 0.0665,
    "enron_emails": 0.0018,
    "gutenberg_pg_19": 0.0271,
    "pile_cc": 0.2369,
    "ubuntu_irc": 0.0118,
    "europarl": 0.0079,
    "hackernews": 0.0080,
    "pubmed_abstracts": 0.0388,
    "uspto_backgrounds": 0.0464,
}

PREDICTORS = [
    ("linear(raw)", "linear", {"features": "raw"}),
    ("linear(sqrt)", "linear", {"features": "sqrt"}),
    ("gp(sqrt)", "gp", {"features": "sqrt"}),
    ("loglinear(raw)", "loglinear", {}),
    ("dml(raw)", "dml", {}),
    ("lightgbm(moemix)", "lightgbm", {}),
    ("lightgbm(regmix)", "lightgbm", {"regmix": True}),
    ("auto", "auto", {}),
]


def load(d: Path, split: str) -> tuple[pd.DataFrame, list[str]]:
    m = pd.read_csv(d / f"{split}_mixture_1m.csv")
    loss = pd.read_csv(d / f"{split}_pile_loss_1m.csv")
    df = m.merge(loss, on="index")
    cols = [c for c in m.columns if c != "index"]
    return df, cols


def matrix(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    # the released weights are rounded to 3 decimals (row sums 0.996-1.003): renormalise
    W = df[cols].to_numpy(dtype=np.float64)
    return W / W.sum(axis=1, keepdims=True)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def fit_eval(name: str, params: dict, X, y, Xte, yte, seed: int) -> dict:
    if name in ("auto", "gp", "lightgbm", "loglinear", "dml"):
        params = {"seed": seed, **params}
    t = time.perf_counter()
    with blas_threads(1):
        p = make_predictor(name, **params).fit(X, y)
        fit_s = time.perf_counter() - t
        pred = p.predict(Xte)
    out = {f"test_{k}": (None if v is None else round(v, 4)) for k, v in all_metrics(pred, yte).items()}
    out["fit_s"] = round(fit_s, 2)
    # decision quality: actual loss of the test mixture the predictor ranks first, minus the best
    out["test_top1_regret"] = round(float(yte[int(np.argmin(pred))] - yte.min()), 4)
    if name == "auto":
        from moemix.mixing.metrics import spearman

        out["cv_spearman"] = round(spearman(p.oof, y), 4)
        out["members"] = {t["candidate"]: round(t["weight"], 3) for t in p.cv_table if t["weight"] > 0}
    return out, p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "regmix"))
    ap.add_argument("--ns", default="32,64,128,512")
    ap.add_argument("--predictors", default=",".join(p[0] for p in PREDICTORS))
    ap.add_argument("--subsets", type=int, default=0, help="also fit on this many disjoint n-run subsets")
    ap.add_argument("--propose", action="store_true", help="propose a mixture from the 512-run auto fit")
    ap.add_argument(
        "--timing", default="", help="e.g. 20,40,60: median wall time of fit_runs(auto) incl. plots"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--all-targets",
        type=int,
        default=0,
        help="also fit auto / linear(sqrt) / lightgbm(regmix) on this many runs for every loss column",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    d = Path(args.data)
    if not (d / "train_mixture_1m.csv").exists():
        print(f"RegMix data not found in {d}", file=sys.stderr)
        return 1
    tr, cols = load(d, "train")
    te, _ = load(d, "test")
    Xtr, ytr = matrix(tr, cols), tr[TARGET].to_numpy()
    Xte, yte = matrix(te, cols), te[TARGET].to_numpy()
    wanted = set(args.predictors.split(","))
    ns = [int(n) for n in args.ns.split(",")]

    for n in ns:
        for label, name, params in PREDICTORS:
            if label not in wanted:
                continue
            res, _ = fit_eval(name, params, Xtr[:n], ytr[:n], Xte, yte, args.seed)
            emit({"bench": "predictor", "n": n, "subset": "first", "predictor": label, **res})

    if args.subsets:
        for n in ns:
            k = min(args.subsets, len(Xtr) // n)
            if k < 2:
                continue
            for label, name, params in PREDICTORS:
                if label not in wanted:
                    continue
                rhos = []
                for i in range(k):
                    sl = slice(i * n, (i + 1) * n)
                    res, _ = fit_eval(name, params, Xtr[sl], ytr[sl], Xte, yte, args.seed)
                    rhos.append(res["test_spearman"] if res["test_spearman"] is not None else float("nan"))
                emit(
                    {
                        "bench": "predictor_subsets",
                        "n": n,
                        "k": k,
                        "predictor": label,
                        "test_spearman_median": round(statistics.median(rhos), 4),
                        "test_spearman_min": round(min(rhos), 4),
                        "test_spearman_all": rhos,
                    }
                )

    if args.all_targets:
        n = args.all_targets
        for col in [c for c in tr.columns if c.startswith("metric/")]:
            row = {"bench": "all_targets", "n": n, "target": col}
            for label, name, params in PREDICTORS:
                if label in ("auto", "linear(sqrt)", "lightgbm(moemix)", "lightgbm(regmix)"):
                    res, _ = fit_eval(
                        name, params, Xtr[:n], tr[col].to_numpy()[:n], Xte, te[col].to_numpy(), args.seed
                    )
                    row[label] = res["test_spearman"]
            emit(row)

    for n in [int(v) for v in args.timing.split(",") if v]:
        from moemix.mixing.fit import FitConfig, fit_runs

        df = tr.iloc[:n].copy()
        df[cols] = Xtr[:n]
        times = []
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                fit_runs(df, TARGET, cols, FitConfig(predictor="auto", seed=args.seed + r), tmp)
                times.append(time.perf_counter() - t)
        emit(
            {
                "bench": "auto_fit_time",
                "n": n,
                "repeats": args.repeats,
                "median_s": round(statistics.median(times), 2),
                "all_s": [round(t, 2) for t in times],
            }
        )

    if args.propose:
        from moemix.mixing.fit import FitConfig, fit_runs
        from moemix.mixing.propose import ProposeConfig, propose

        df = tr.copy()
        df[cols] = Xtr
        prior = np.array([PRIOR[c.replace("train_the_pile_", "")] for c in cols])
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            fit = fit_runs(
                df,
                TARGET,
                cols,
                FitConfig(predictor="auto", seed=args.seed, weights_prefix="train_the_pile_"),
                tmp,
                prior=prior,
            )
            fit_s = time.perf_counter() - t
            for method, extra in (("simulate", {}), ("constrained", {"kl_weight": 0.05}), ("search", {})):
                t = time.perf_counter()
                p = propose(
                    fit,
                    None,
                    ProposeConfig(method=method, n_samples=100_000, top_k=128, seed=args.seed, **extra),
                )
                emit(
                    {
                        "bench": "propose",
                        "n": len(df),
                        "method": method,
                        **extra,
                        "predicted_loss": round(p.predicted_loss, 4),
                        "predicted_std": None if p.predicted_std is None else round(p.predicted_std, 4),
                        "uniform": round(p.baselines["uniform"], 4),
                        "natural": round(p.baselines["natural"], 4),
                        "best_observed_train": round(float(ytr.min()), 4),
                        "fit_s": round(fit_s, 1),
                        "propose_s": round(time.perf_counter() - t, 1),
                        "weights": {dn: round(float(w), 4) for dn, w in zip(fit.domains, p.weights)},
                    }
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
