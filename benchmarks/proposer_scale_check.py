"""Do two proposers' choices keep their order on a larger model? A CPU check, without Ray.

``bench_mixture_quality.py --json`` records, per target, the mixture a proposer chose at the demo
pretrain scale. Run it twice on one corpus (say ``--set propose.method=simulate`` and the default
``auto``) and this script retrains uniform and each recorded mixture with a wider, deeper model on more
tokens, under the same seeds, and prints each one's target loss and its margin over uniform:

    python benchmarks/proposer_scale_check.py bench_out/quality-mixed --target novels:1,go:1 \\
        --variant simulate=quality-simulate.json --variant constrained=quality-auto.json \\
        --d-model 128 --n-layers 4 --d-expert 256 --steps 600 --seeds 0 1 --out bench_out/scale2x-mixed

Runs are cached by their content (mixture, model, schedule, seed, tokens), so a re-run trains only what
changed. The session-16 figures in docs/benchmarks/mixture_quality.md came from the command above.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixture_quality import parse_target, pretrain_all, target_loss  # noqa: E402
from moemix.configtools import from_dict  # noqa: E402
from moemix.pipeline.config import PretrainConfig  # noqa: E402


def load_variant(quality_dir: Path, arg: str, spec: str) -> tuple[str, dict[str, float]]:
    name, sep, file = arg.partition("=")
    if not sep or not name or not file:
        raise SystemExit(f"--variant {arg!r}: expected NAME=QUALITY_JSON")
    path = quality_dir / file
    try:
        doc = json.loads(path.read_text())
        return name, doc["targets"][spec]["mixture"]["weights"]
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file (run bench_mixture_quality.py --json first)") from None
    except KeyError:
        raise SystemExit(
            f"{path}: no target {spec!r} recorded (its targets: "
            f"{', '.join(json.loads(path.read_text()).get('targets', {}))})"
        ) from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("quality_dir", type=Path, help="a bench_mixture_quality.py --out folder")
    p.add_argument("--target", required=True, help="mean or DOM1:W1,DOM2:W2, as recorded")
    p.add_argument("--variant", action="append", required=True, help="NAME=QUALITY_JSON in quality_dir")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-expert", type=int, default=256)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="the run cache")
    args = p.parse_args(argv)

    resolved_path = args.quality_dir / "run" / "config.resolved.yaml"
    if not resolved_path.exists():
        raise SystemExit(f"{resolved_path}: no such file (not a bench_mixture_quality.py --out folder)")
    resolved = yaml.safe_load(resolved_path.read_text())
    pre = from_dict(PretrainConfig, resolved["pretrain"], where="pretrain")
    model = replace(
        pre.model, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, d_expert=args.d_expert
    )
    train = replace(pre.train, steps=args.steps)
    variants = dict(load_variant(args.quality_dir, v, args.target) for v in args.variant)
    first = json.loads((args.quality_dir / args.variant[0].partition("=")[2]).read_text())
    domains, tokens = first["domains"], Path(first["tokens_dir"])
    mixes: dict[str, dict[str, float]] = {"uniform": {d: 1 / len(domains) for d in domains}, **variants}
    runs = {f"{n}@{s}": (m, s) for s in args.seeds for n, m in mixes.items()}
    print(
        f"model d_model={model.d_model} n_layers={model.n_layers} d_expert={model.d_expert}; "
        f"{train.num_steps} steps, {train.planned_tokens:,} tokens",
        flush=True,
    )
    res: dict[str, dict[str, Any]] = pretrain_all(runs, model, train, tokens, args.out, jobs=args.jobs)

    target = parse_target(args.target)
    print(f"\n{'run':<22}{'target':>9}{'mean of all':>13}  params")
    for name, r in sorted(res.items()):
        print(
            f"{name:<22}{target_loss(r['loss'], target):9.4f}{statistics.fmean(r['loss'].values()):13.4f}  "
            f"{r['params_total'] / 1e6:.2f}M ({r['params_active'] / 1e6:.2f}M active), "
            f"{r['tokens']:,} tokens, {r['seconds']:.0f}s"
        )
    for s in args.seeds:
        u = target_loss(res[f"uniform@{s}"]["loss"], target)
        margins = ", ".join(f"{n} {u - target_loss(res[f'{n}@{s}']['loss'], target):+.4f}" for n in variants)
        print(f"seed {s}: over uniform {margins}")


if __name__ == "__main__":
    main()
