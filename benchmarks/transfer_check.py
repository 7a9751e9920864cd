"""How well a benchmark's fit predicted the *pretrain-scale* losses of the mixtures it never saw there.

    .venv/bin/python benchmarks/transfer_check.py bench_out/quality-prose [--target mean] [--json FILE]

Reads what ``bench_mixture_quality.py`` left in that directory: the pipeline's fit for the target (the
fit stage that predicts the target's recorded uniform baseline) and the pretrain results of uniform,
natural and the random mixtures (seed 0). Prints the Spearman rank correlation of predicted vs measured
target loss over those mixtures and the predicted vs measured gap between the best and uniform: a
direct check of the extrapolation from proxies to the pretrain model, which the proxies' own CV cannot
give. With ``--json`` it reads another results file of the same directory (``bench_mixture_quality.py
--json``), so two configurations of one swarm (with and without the scale check, say) are scored on the
same pretraining runs. When the guard withheld an optimum that the benchmark pretrained, its predicted
and measured (seed-mean) gain over uniform are printed too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from moemix.mixing.fit import load_fit


def fit_behind(run_dir: Path, uniform_baseline: float):
    """The fit stage the target's mixture.json came from: the one that predicts its uniform baseline."""
    for path in sorted((run_dir / "fit").iterdir()):
        if not (path / "manifest.json").exists():
            continue
        fit = load_fit(path)
        u = np.full((1, len(fit.domains)), 1.0 / len(fit.domains))
        if abs(float(fit.predictor.predict(u)[0]) - uniform_baseline) < 1e-9:
            return fit
    raise SystemExit(f"no fit under {run_dir / 'fit'} predicts uniform = {uniform_baseline}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_dir", type=Path)
    p.add_argument("--target", default="mean")
    p.add_argument("--json", type=Path, help="results file (default: BENCH_DIR/quality.json)")
    args = p.parse_args(argv)
    q = json.loads((args.json or args.bench_dir / "quality.json").read_text())
    res = q["targets"][args.target]
    target = res["target"]
    fit = fit_behind(args.bench_dir / "run", res["mixture"]["baselines"]["uniform"])
    names = [n for n in q["runs"] if n == "uniform@seed0" or n == "natural" or n.startswith("random_")]
    W = np.array([[q["runs"][n]["mixture"].get(d, 0.0) for d in fit.domains] for n in names])
    W /= W.sum(axis=1, keepdims=True)
    pred = fit.predictor.predict(W)
    meas = np.array([res["losses"][n] for n in names])
    rho = spearmanr(pred, meas).statistic
    u = names.index("uniform@seed0")
    best = int(np.argmin(meas))
    print(
        f"{args.bench_dir.name} target {args.target} ({target or 'mean of all domains'}): "
        f"{len(names)} mixtures at the pretrain scale"
    )
    print(f"  Spearman(predicted, measured) = {rho:.3f}")
    print(
        f"  best measured {names[best]}: measured gain over uniform {meas[u] - meas[best]:+.4f}, "
        f"predicted {pred[u] - pred[best]:+.4f}"
    )
    withheld = (res["mixture"].get("decision") or {}).get("optimum")
    seeds = [n for n in res["losses"] if n.startswith(f"withheld/{args.target}")]
    if withheld and seeds:
        w = np.array([[withheld.get(d, 0.0) for d in fit.domains]])
        uni = [res["losses"][n] for n in res["losses"] if n.startswith("uniform@seed")]
        gain_pred = float(pred[u] - fit.predictor.predict(w / w.sum())[0])
        gain_meas = float(np.mean(uni) - np.mean([res["losses"][n] for n in seeds]))
        print(
            f"  withheld optimum: predicted gain over uniform {gain_pred:+.4f}, measured {gain_meas:+.4f} "
            f"(seed means, {len(seeds)} seeds)"
        )
    for n, a, b in sorted(zip(names, pred, meas), key=lambda t: t[2]):
        print(f"    {n:<14} predicted {a:.4f}  measured {b:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
