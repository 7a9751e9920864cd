"""Would measuring a candidate mixture directly at the proxy scale have predicted its pretrain-scale verdict?

    .venv/bin/python benchmarks/proxy_scale_audit.py bench_out/quality-code [--json FILE] [--seeds 3]

Reads what ``bench_mixture_quality.py`` left in a benchmark directory (its results file and the run's
resolved config) and trains, with the *proxy* model and the swarm's training config, the mixtures it
pretrained for each target: uniform, the shipped mixture (when it is not uniform) and the optimum the
do-no-harm guard shrank or withheld, each under seeds 0..S-1 (paired: seed s of a candidate against seed s
of uniform, which shares its initialisation). Evaluation uses the pretrain config's validation tokens, so
only the model and the training budget differ from the pretrain-scale runs. Prints, per target and
candidate, the paired gain over uniform at the proxy scale next to the one the benchmark measured at the
pretrain scale: a direct test of whether a verification round at the proxies' scale (CLIMB's and
Aioli's way of checking a candidate) could replace the fit's noise guard. Runs are cached under
``BENCH_DIR/proxy_audit``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned workers import it too
from bench_mixture_quality import parse_target, pretrain_all, target_loss  # noqa: E402
from moemix._io import write_json_atomic  # noqa: E402


def candidates(
    quality: dict[str, Any], domains: list[str], seeds: int
) -> dict[str, tuple[dict[str, float], int]]:
    """Run name -> (mixture, seed): uniform, and per target its shipped mixture (unless uniform) and the
    optimum the guard did not ship whole."""
    uniform = {d: 1.0 / len(domains) for d in domains}
    runs = {f"uniform@{s}": (uniform, s) for s in range(seeds)}
    for spec, t in quality["targets"].items():
        mix = t["mixture"]
        dec = mix.get("decision") or {}
        shipped = {d: float(w) for d, w in mix["weights"].items()}
        if any(abs(shipped.get(d, 0.0) - uniform[d]) > 1e-6 for d in domains):
            runs.update({f"shipped/{spec}@{s}": (shipped, s) for s in range(seeds)})
        if dec.get("optimum") and dec.get("action") != "optimum":
            runs.update({f"optimum/{spec}@{s}": (dict(dec["optimum"]), s) for s in range(seeds)})
    return runs


def paired_gains(
    losses: dict[str, dict[str, float]], kind: str, spec: str, target: dict[str, float] | None, seeds: int
) -> list[float] | None:
    """Per seed, uniform's target loss minus the candidate's (positive: the candidate is better)."""
    if f"{kind}/{spec}@0" not in losses:
        return None
    return [
        target_loss(losses[f"uniform@{s}"], target) - target_loss(losses[f"{kind}/{spec}@{s}"], target)
        for s in range(seeds)
    ]


def audit(quality: dict[str, Any], losses: dict[str, dict[str, float]], seeds: int) -> list[dict[str, Any]]:
    """One row per (target, candidate): proxy-scale paired gains next to the pretrain scale's."""
    rows = []
    for spec, t in quality["targets"].items():
        target = parse_target(spec)
        u = [target_loss(losses[f"uniform@{s}"], target) for s in range(seeds)]
        pretrain = {
            "shipped": t.get("paired_margins"),
            "optimum": (t.get("withheld") or {}).get("paired_margins"),
        }
        for kind in ("shipped", "optimum"):
            gains = paired_gains(losses, kind, spec, target, seeds)
            if gains is None:
                continue
            at_pretrain = pretrain[kind]
            rows.append(
                {
                    "target": spec,
                    "candidate": kind,
                    "proxy_gains": gains,
                    "proxy_gain": statistics.fmean(gains),
                    "proxy_uniform_spread": max(u) - min(u),
                    "pretrain_gains": at_pretrain,
                    "pretrain_gain": None if at_pretrain is None else statistics.fmean(at_pretrain),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_dir", type=Path)
    p.add_argument("--json", type=Path, help="the benchmark's results file (default: BENCH_DIR/quality.json)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, help="audit results (default: BENCH_DIR/proxy_audit.json)")
    args = p.parse_args(argv)
    from moemix.configtools import from_dict
    from moemix.pipeline.config import PretrainConfig
    from moemix.proxies.config import ProxiesConfig
    from moemix.proxies.run import swarm_train_config

    quality = json.loads((args.json or args.bench_dir / "quality.json").read_text())
    resolved = yaml.safe_load((args.bench_dir / "run" / "config.resolved.yaml").read_text())
    proxies = from_dict(ProxiesConfig, resolved["proxies"], where="proxies")
    pretrain = from_dict(PretrainConfig, resolved["pretrain"], where="pretrain")
    train = replace(swarm_train_config(proxies), eval_tokens=pretrain.train.eval_tokens)
    runs = candidates(quality, quality["domains"], args.seeds)
    results = pretrain_all(
        runs,
        proxies.model,
        train,
        Path(quality["tokens_dir"]),
        args.bench_dir / "proxy_audit",
        jobs=args.jobs,
    )
    rows = audit(quality, {n: r["loss"] for n, r in results.items()}, args.seeds)
    print(f"\n{args.bench_dir.name}: paired gain over uniform (seed means; per seed in brackets)")
    for r in rows:
        pre = "-" if r["pretrain_gain"] is None else f"{r['pretrain_gain']:+.4f}"
        print(
            f"  {r['target']:<24} {r['candidate']:<8} proxy scale {r['proxy_gain']:+.4f} "
            f"[{' '.join(f'{g:+.3f}' for g in r['proxy_gains'])}] (uniform spread "
            f"{r['proxy_uniform_spread']:.4f})   pretrain scale {pre}"
        )
    write_json_atomic(args.out or args.bench_dir / "proxy_audit.json", {"rows": rows, "seeds": args.seeds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
