"""Which predictor, fitted on the proxies, ranks the mixtures pretrained at the larger scale best?

    .venv/bin/python benchmarks/predictor_transfer.py bench_out/quality-prose bench_out/quality-code ...

In-scale cross-validation scores a predictor on more proxies; what the pipeline needs is a ranking that
holds for the pretrain model. Each ``bench_mixture_quality.py`` folder holds both: the swarm (the
pipeline's proxies stage) and every mixture pretrained at the pretrain scale with its per-domain losses
(uniform, natural, 8 random, the chosen and withheld mixtures; seed 0 of each). For every target the
folder recorded, this script refits each predictor on the same base proxies and the same target and
prints its Spearman rank correlation with the pretrain-scale target loss over those mixtures, next to its
in-scale CV Spearman. ``scaling_law`` is the folder's own fit (the pipeline's, with the
extrapolation to the pretrain budget and model size it shipped), the table predictors are fitted on the
proxies' final losses (a ranking needs no extrapolation in level).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from moemix.mixing.fit import FitConfig, fit_runs, load_fit
from moemix.mixing.predictors import PREDICTOR_NAMES

DEFAULT_PREDICTORS = ("scaling_law", "auto", "loglinear", "dml", "linear", "lightgbm", "gp")


def pretrained_mixtures(q: dict[str, Any], domains: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Seed-0 runs with distinct mixtures: names, weights (n x d) and per-domain losses (n x d)."""
    names, seen = [], set()
    for name, rec in q["runs"].items():
        if "@seed" in name and not name.endswith("@seed0"):
            continue
        w = tuple(round(rec["mixture"].get(d, 0.0), 6) for d in domains)
        if w in seen:  # the chosen mixture of a mean target is often uniform itself
            continue
        seen.add(w)
        names.append(name)
    W = np.array([[q["runs"][n]["mixture"].get(d, 0.0) for d in domains] for n in names])
    L = np.array([[q["runs"][n]["loss"][d] for d in domains] for n in names])
    return names, W / W.sum(axis=1, keepdims=True), L


def pipeline_fits(run_dir: Path, swarm: Path) -> list[Path]:
    """The pipeline's fit stages of this swarm (one per target), each a ``scaling_law`` fit."""
    fits = []
    for p in sorted((run_dir / "fit").iterdir()):
        path = p / "manifest.json"
        manifest = json.loads(path.read_text()) if path.exists() else None
        if manifest is None or manifest["inputs"]["proxies"] != swarm.name:
            continue
        if manifest["outputs"]["predictor"] != "scaling_law":
            raise SystemExit(f"{p}: the pipeline's fit is not scaling_law, which this script scores it as")
        fits.append(p)
    return fits


def proxies_stage(run_dir: Path) -> Path:
    stages = [p for p in sorted((run_dir / "proxies").iterdir()) if (p / "runs.parquet").exists()]
    if len(stages) != 1:
        raise SystemExit(f"{run_dir / 'proxies'}: expected one finished swarm, found {len(stages)}")
    return stages[0]


def score(quality_dir: Path, predictors: list[str]) -> list[dict[str, Any]]:
    q = json.loads((quality_dir / "quality.json").read_text())
    run_dir = quality_dir / "run"
    swarm = proxies_stage(run_dir)
    runs = pd.read_parquet(swarm / "runs.parquet")
    runs = runs[(runs["status"] == "ok") & ((runs["scale"] == "base") if "scale" in runs else True)]
    rows = []
    for path in pipeline_fits(run_dir, swarm):
        spec = json.loads((path / "fit.json").read_text())
        pipeline_fit = load_fit(path)
        domains = pipeline_fit.domains
        names, W, L = pretrained_mixtures(q, domains)
        coefs = dict(zip(spec["target"]["columns"], spec["target"]["coefs"]))
        t = np.array([coefs.get(f"loss/{d}", 0.0) for d in domains])
        measured = L @ t
        target = ",".join(f"{c}:{w!r}" for c, w in coefs.items())
        label = "mean" if np.allclose(t, t[0]) else "+".join(d for d, x in zip(domains, t) if x > 0)
        for name in predictors:
            if name == "scaling_law":
                # the pipeline's own fit: the extrapolation to the pretrain budget and size it shipped
                fit = pipeline_fit
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    fit = fit_runs(
                        runs,
                        target,
                        [f"w/{d}" for d in domains],
                        FitConfig(predictor=name, plots=False),
                        tmp,
                        prior=np.asarray(spec["prior"]),
                    )
            rho = float(spearmanr(fit.predictor.predict(W), measured).statistic)
            rows.append(
                {
                    "corpus": quality_dir.name.removeprefix("quality-"),
                    "target": label,
                    "predictor": name,
                    "n_pretrained": len(names),
                    "transfer_spearman": rho,
                    "cv_spearman": float(fit.cv.get("spearman", float("nan"))),
                }
            )
            print(
                f"  {rows[-1]['corpus']:<10} {label:<26} {name:<12} transfer {rho:6.3f}  "
                f"cv {rows[-1]['cv_spearman']:6.3f}  ({len(names)} pretrained mixtures)",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("quality_dirs", nargs="+", type=Path)
    p.add_argument("--predictors", default=",".join(DEFAULT_PREDICTORS))
    p.add_argument("--json", type=Path, help="write every row here")
    args = p.parse_args(argv)
    predictors = args.predictors.split(",")
    unknown = [n for n in predictors if n not in PREDICTOR_NAMES]
    if unknown:
        raise SystemExit(f"--predictors: unknown {', '.join(unknown)} (one of {', '.join(PREDICTOR_NAMES)})")
    for d in args.quality_dirs:
        if not (d / "quality.json").exists():
            raise SystemExit(f"{d / 'quality.json'}: no such file (run bench_mixture_quality.py --out {d})")
    rows = [r for d in args.quality_dirs for r in score(d, predictors)]
    print(f"\n{'predictor':<12} {'mean targets':>14} {'subset targets':>15} {'all':>7} {'cv (all)':>9}")
    for name in predictors:
        mine = [r for r in rows if r["predictor"] == name]
        mean_t = [r["transfer_spearman"] for r in mine if r["target"] == "mean"]
        sub_t = [r["transfer_spearman"] for r in mine if r["target"] != "mean"]
        print(
            f"{name:<12} {statistics.fmean(mean_t):14.3f} {statistics.fmean(sub_t):15.3f} "
            f"{statistics.fmean(mean_t + sub_t):7.3f} {statistics.fmean(r['cv_spearman'] for r in mine):9.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
