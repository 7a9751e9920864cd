"""Is there a mixture to find? The target's headroom over uniform, measured at the pretraining scale.

    .venv/bin/python benchmarks/headroom_check.py CONFIG --out bench_out/quality-prose \
        --target mean --target bible:1,manpages:1

``bench_mixture_quality.py`` asks whether moemix's mixture beats uniform by more than the seed noise.
When it does not, two explanations differ in what they call for: the proxies missed a better mixture,
or there is none to find at this scale. This script tells them apart without the proxies. It pretrains
the benchmark's own baselines (uniform under ``--seeds`` seeds, natural, the 8 Dirichlet(1) mixtures:
the same runs, cached in the same ``OUT/pretrain``) and fits, on those pretrain-scale runs, one law per
domain in its own weight only:

    L_d(w) = a_d - b_d * log(t_d + (1 - t_d) * w_d)

``b_d`` is how much domain d's loss falls per e-fold of its own tokens, ``t_d`` (a grid, least squares) the
share of the others' tokens that counts for it. Where every ``t_d`` is 0 the target's optimum is
``w_d`` proportional to ``target_d * b_d``, and for the mean of all domains its gain over uniform is
``mean(b) * KL(b / sum(b) || uniform)``, about ``mean(b) * cv(b)**2 / 2``: the mean target has headroom only
when the domains' slopes differ, and little unless they differ a lot (a coefficient of variation of 0.2
gives 2% of ``mean(b)``).
With ``t_d`` the optimum is a water-filling (closed form up to one bisection), capped at
``--max-epochs`` passes over each domain's training tokens.

The law's optimum is then pretrained under the same seeds (paired with uniform's) and its measured
margin printed next to the law's prediction, the uniform seed spread, its leave-one-mixture-out error,
and, when ``OUT/quality.json`` exists, the margin of the mixture moemix chose. The law sees only the
pretrain-scale runs, which moemix never trains before choosing: it is a probe of the target, not a method.
Results go to ``OUT/headroom.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers import it too
from bench_mixture_quality import (  # noqa: E402
    baseline_runs,
    parse_target,
    pretrain_all,
    slug,
    target_loss,
)
from moemix._io import write_json_atomic  # noqa: E402

# share of the other domains' tokens that counts for a domain (t_d); 0 is left out: a Dirichlet(1) draw
# can give a domain 1e-4, whose log would decide the fit alone
TRANSFER_GRID = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class OwnWeightLaw:
    """``L(w) = a - b * log(t + (1 - t) * w)`` for one domain, ``w`` its own weight."""

    a: float
    b: float
    t: float

    def __call__(self, w: np.ndarray | float) -> np.ndarray:
        return self.a - self.b * np.log(self.t + (1.0 - self.t) * np.asarray(w, dtype=np.float64))


def fit_own_weight_law(w: np.ndarray, loss: np.ndarray) -> OwnWeightLaw:
    """Least squares over ``TRANSFER_GRID`` x (a, b), with ``b >= 0`` (more of a domain never hurts it)."""
    w, loss = np.asarray(w, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    best: tuple[float, OwnWeightLaw] | None = None
    for t in TRANSFER_GRID:
        x = np.log(t + (1.0 - t) * w)
        xc = x - x.mean()
        denom = float(xc @ xc)
        b = max(0.0, -float(xc @ (loss - loss.mean())) / denom) if denom > 0 else 0.0
        a = float(loss.mean() + b * x.mean())
        law = OwnWeightLaw(a, b, t)
        sse = float(((law(w) - loss) ** 2).sum())
        if best is None or sse < best[0] - 1e-15:
            best = (sse, law)
    assert best is not None
    return best[1]


def law_optimum(laws: list[OwnWeightLaw], target: np.ndarray, caps: np.ndarray | None = None) -> np.ndarray:
    """The mixture minimizing ``sum_d target_d * L_d(w_d)`` on the simplex (each ``w_d <= caps_d``).

    The objective is convex (minus a log of an affine map), and its KKT conditions give a water-filling:
    ``w_d = clip(c_d / lam - t_d / (1 - t_d), 0, cap_d)`` with ``c_d = target_d * b_d``, ``lam`` found by
    bisection so the weights sum to 1."""
    k = len(laws)
    c = np.asarray(target, dtype=np.float64) * np.array([law.b for law in laws])
    shift = np.array([law.t / (1.0 - law.t) for law in laws])
    caps = np.ones(k) if caps is None else np.minimum(1.0, np.asarray(caps, dtype=np.float64))
    if caps.sum() < 1.0:
        raise ValueError(f"the caps sum to {caps.sum():.3f} < 1: no mixture fits them")
    if not (c > 0).any():
        return np.full(k, 1.0 / k)

    def weights(lam: float) -> np.ndarray:
        return np.clip(c / lam - shift, 0.0, caps)

    # sum(weights) falls as lam grows; bracket the root in log space (weights can be capped to sum < 1
    # only when every c_d > 0 domain is capped: then fill the rest in proportion to the caps)
    lo, hi = 1e-12, 1e12
    if weights(lo).sum() < 1.0:
        w = weights(lo)
        free = caps - w
        return w + free * (1.0 - w.sum()) / free.sum()
    for _ in range(200):
        mid = float(np.sqrt(lo * hi))
        if weights(mid).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    w = weights(hi)
    return w / w.sum()


def elasticities(laws: list[OwnWeightLaw], w: float) -> np.ndarray:
    """``-dL_d / dlog w_d`` at weight ``w``: how much each domain's loss falls per e-fold of its own weight
    there. The mean target's optimum moves weight toward the domains where this is large; when it is the
    same for all, uniform is the optimum."""
    return np.array([law.b * (1.0 - law.t) * w / (law.t + (1.0 - law.t) * w) for law in laws])


def fit_laws(
    mixtures: list[dict[str, float]], losses: list[dict[str, float]], domains: list[str]
) -> list[OwnWeightLaw]:
    w = np.array([[m[d] for d in domains] for m in mixtures])
    loss = np.array([[r[d] for d in domains] for r in losses])
    return [fit_own_weight_law(w[:, j], loss[:, j]) for j in range(len(domains))]


def target_vector(target: dict[str, float] | None, domains: list[str]) -> np.ndarray:
    """Normalised target weights over ``domains`` (``None``: the mean of all)."""
    if target is None:
        return np.full(len(domains), 1.0 / len(domains))
    missing = sorted(set(target) - set(domains))
    if missing:
        raise SystemExit(f"--target names unknown domains {missing}; the corpus has {domains}")
    v = np.array([float(target.get(d, 0.0)) for d in domains])
    return v / v.sum()


def predicted_target(laws: list[OwnWeightLaw], tvec: np.ndarray, w: np.ndarray) -> float:
    return float(sum(tv * law(wd) for tv, law, wd in zip(tvec, laws, w)))


def leave_one_out(
    mixtures: list[dict[str, float]], losses: list[dict[str, float]], domains: list[str], tvec: np.ndarray
) -> dict[str, float]:
    """Each run's target loss predicted by laws fitted without it: RMSE and Spearman over the runs."""
    from scipy.stats import spearmanr

    pred, meas = [], []
    for i in range(len(mixtures)):
        keep = [j for j in range(len(mixtures)) if j != i]
        laws = fit_laws([mixtures[j] for j in keep], [losses[j] for j in keep], domains)
        w = np.array([mixtures[i][d] for d in domains])
        pred.append(predicted_target(laws, tvec, w))
        meas.append(float(tvec @ np.array([losses[i][d] for d in domains])))
    err = np.array(pred) - np.array(meas)
    return {"rmse": float(np.sqrt((err**2).mean())), "spearman": float(spearmanr(pred, meas)[0])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="corpus config YAML (default: the built-in demo preset)")
    p.add_argument("--out", type=Path, required=True, help="benchmark directory (bench_mixture_quality's)")
    p.add_argument("--target", action="append", help="mean or DOM1:W1,DOM2:W2 (repeatable; default: mean)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of uniform and of each law optimum")
    p.add_argument("--random", type=int, default=8, help="Dirichlet(1) baselines (as the benchmark's)")
    p.add_argument("--max-epochs", type=float, default=4.0, help="cap on passes over a domain's tokens")
    p.add_argument("--jobs", type=int, default=2, help="pretraining runs in parallel")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    out = args.out.resolve()
    run_dir = out / "run"
    specs = args.target or ["mean"]
    targets = {spec: parse_target(spec) for spec in specs}

    cmd = [sys.executable, "-m", "moemix.cli", "domains", *([args.config] if args.config else [])]
    cmd += ["--out", str(run_dir), "--quiet", *(x for s in args.set for x in ("--set", s))]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit("the domains stage failed")
    from moemix.configtools import from_dict
    from moemix.pipeline.config import PretrainConfig

    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    pretrain = from_dict(PretrainConfig, resolved.get("pretrain"), where="pretrain")
    tcfg = pretrain.train
    manifests = sorted((run_dir / "domains").glob("*/manifest.json"))
    if len(manifests) != 1:  # two configs in one run dir: the baselines would mix their token sets
        raise SystemExit(f"{run_dir / 'domains'}: expected one domains stage, found {len(manifests)}")
    manifest = manifests[0]
    dom_dir = manifest.parent
    dom_out = json.loads(manifest.read_text())["outputs"]
    domains, train_tokens = list(dom_out["domains"]), dom_out["train_tokens"]
    caps = np.array([args.max_epochs * train_tokens[d] / tcfg.planned_tokens for d in domains])

    base = baseline_runs(domains, train_tokens, tcfg.seed, args.seeds, args.random)
    uniform = [n for n in base if n.startswith("uniform@")]
    fitted = [n for n in base if n not in uniform[1:]]  # one run per mixture: uniform at the first seed
    results = pretrain_all(base, pretrain.model, tcfg, dom_dir / "tokens", out / "pretrain", jobs=args.jobs)
    mixtures = [base[n][0] for n in fitted]
    losses = [results[n]["loss"] for n in fitted]
    laws = fit_laws(mixtures, losses, domains)

    plan: dict[str, Any] = {}
    runs: dict[str, tuple[dict[str, float], int]] = {}
    for spec, target in targets.items():
        tvec = target_vector(target, domains)
        w_opt = law_optimum(laws, tvec, caps)
        uni = np.full(len(domains), 1.0 / len(domains))
        plan[spec] = {
            "law_optimum": dict(zip(domains, w_opt.round(6).tolist())),
            "predicted_gain": predicted_target(laws, tvec, uni) - predicted_target(laws, tvec, w_opt),
            "loo": leave_one_out(mixtures, losses, domains, tvec),
        }
        names = [f"law/{slug(spec)}@seed{tcfg.seed + s}" for s in range(args.seeds)]
        plan[spec]["runs"] = names
        runs.update({n: (plan[spec]["law_optimum"], tcfg.seed + s) for s, n in enumerate(names)})
    results |= pretrain_all(runs, pretrain.model, tcfg, dom_dir / "tokens", out / "pretrain", jobs=args.jobs)

    quality = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else None
    print("\nper-domain laws, L_d = a - b log(t + (1-t) w_d), fitted on the pretrain-scale baselines:")
    for d, law in zip(domains, laws):
        print(f"  {d:<14} a {law.a:6.3f}  b {law.b:6.3f}  t {law.t:5.3f}")
    e = elasticities(laws, 1.0 / len(domains))
    report: dict[str, Any] = {"domains": domains, "laws": {d: vars(law) for d, law in zip(domains, laws)}}
    report["elasticity_at_uniform"] = dict(zip(domains, e.tolist()))
    report["elasticity_cv"] = float(e.std() / e.mean()) if e.mean() > 0 else 0.0
    report["headroom_estimate"] = float(e.mean() * report["elasticity_cv"] ** 2 / 2)
    print(
        "  loss per e-fold of own weight at uniform: "
        + ", ".join(f"{d} {x:.3f}" for d, x in zip(domains, e))
        + f"\n  mean {e.mean():.3f}, coefficient of variation {report['elasticity_cv']:.2f} "
        f"(the mean target's headroom is about mean x cv^2 / 2 = {report['headroom_estimate']:.4f})"
    )
    report["targets"] = {}
    for spec, target in targets.items():
        row = plan[spec]
        tl = {n: target_loss(r["loss"], target) for n, r in results.items()}
        u = [tl[n] for n in uniform]
        law_seeds = [tl[n] for n in row["runs"]]
        paired = [a - c for a, c in zip(u, law_seeds)]
        ranked = [row["runs"][0], *fitted]
        rank = 1 + sum(tl[n] < tl[row["runs"][0]] for n in ranked)
        best_baseline = min(fitted, key=lambda n: tl[n])
        row |= {
            "uniform_spread": max(u) - min(u),
            "margin_vs_uniform": statistics.fmean(paired),
            "paired_margins": paired,
            "rank": rank,
            "n_ranked": len(ranked),
            "best_baseline": best_baseline,
            "best_baseline_margin": tl[uniform[0]] - tl[best_baseline],
        }
        if quality and spec in quality.get("targets", {}):
            row["moemix_margin"] = quality["targets"][spec]["margin_vs_uniform"]
        report["targets"][spec] = row
        top = sorted(row["law_optimum"].items(), key=lambda kv: -kv[1])[:4]
        print(f"\n=== target {spec}")
        print(
            f"law LOO error over the {len(fitted)} baselines: RMSE {row['loo']['rmse']:.4f}, "
            f"Spearman {row['loo']['spearman']:.3f}"
        )
        print(
            "law optimum: "
            + ", ".join(f"{d} {w:.3f}" for d, w in top)
            + (", ..." if len(domains) > 4 else "")
        )
        print(
            f"predicted gain over uniform {row['predicted_gain']:+.4f}; measured (seed-mean, paired) "
            f"{row['margin_vs_uniform']:+.4f} [{', '.join(f'{x:+.3f}' for x in paired)}]; "
            f"uniform spread {row['uniform_spread']:.4f}; rank {rank}/{len(ranked)} at seed {tcfg.seed}"
        )
        print(
            f"best baseline at seed {tcfg.seed}: {best_baseline} "
            f"({row['best_baseline_margin']:+.4f} over uniform)"
        )
        if "moemix_margin" in row:
            print(f"moemix's chosen mixture (quality.json): {row['moemix_margin']:+.4f} over uniform")
    write_json_atomic(out / "headroom.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
