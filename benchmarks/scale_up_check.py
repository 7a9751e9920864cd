"""Do the mixtures chosen at the pretrain scale still win at a larger one? A GPU check, without Ray.

``bench_mixture_quality.py`` scores mixtures on the demo preset's pretrain model (~1.6M parameters,
614k tokens). This script takes what it chose on a corpus (every ``mixture-*.json`` in its ``--out``
directory, the withheld optimum of each guarded decision included) and trains a larger model on more
tokens with the same uniform, natural and random baselines, then scores every target on the larger
runs: does the shipped mixture still rank first, and was withholding the optimum still right?

    # here: gather the corpora's tokens and mixtures into one folder that travels to the GPU machine
    python benchmarks/scale_up_check.py prepare bench_out/quality-prose bench_out/quality-code \
        --out bench_out/gpu
    # there (torch only; the plan's runs in its order, stopping when --budget-s is spent)
    PYTHONPATH=src python3 benchmarks/scale_up_check.py train bench_out/gpu/plan.json --results R.json
    # anywhere: the table per corpus and target
    python benchmarks/scale_up_check.py report bench_out/gpu/plan.json R.json

Runs are ordered so that a cut-off budget still leaves every corpus its most telling comparisons
first (uniform, each shipped mixture, each withheld optimum, natural), then second seeds, then random
mixtures. Results are written after every run, so a run killed at its time limit keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# ~21M parameters (6.3M active) at the pretrain preset's vocabulary: 13x the pretrain model's 1.6M
SCALE_MODEL = dict(d_model=256, n_layers=6, n_heads=8, n_experts=8, top_k=2, d_expert=512, max_seq_len=256)
# 6.1M tokens: 10x the pretrain preset's 614k; the schedule's shape is the preset's (25% warmup)
SCALE_TRAIN = dict(
    steps=750,
    batch_size=32,
    seq_len=256,
    lr=2e-3,
    warmup_frac=0.25,
    eval_tokens=49152,
    eval_batch_size=64,
    precision="bf16",
    log_every=250,
    measure_mfu=False,
)
RANDOM_SEED_BASE = 1000  # as bench_mixture_quality.py: the same random mixtures on every corpus
N_RANDOM = 3


def _target_of(doc: dict) -> dict[str, float] | None:
    """None for the mean of all domains, else domain -> weight, from mixture.json's target name."""
    weights = {}
    for term in doc["target"]["name"].split(" + "):
        w, _, d = term.partition("*loss/")
        weights[d] = float(w)
    if len(set(round(w, 6) for w in weights.values())) == 1 and len(weights) == len(doc["domains"]):
        return None
    return weights


def prepare(quality_dirs: list[Path], out: Path) -> None:
    tiers: dict[int, list[dict]] = {}  # priority tier -> runs
    corpora = {}
    for qd in quality_dirs:
        name = qd.name.removeprefix("quality-")
        docs = {
            p.stem.removeprefix("mixture-"): json.loads(p.read_text())
            for p in sorted(qd.glob("mixture-*.json"))
        }
        if not docs:
            sys.exit(f"{qd}: no mixture-*.json (run bench_mixture_quality.py with --out {qd} first)")
        fps = {d["domains_fingerprint"] for d in docs.values()}
        if len(fps) != 1:
            sys.exit(f"{qd}: mixtures from different domains stages {sorted(fps)}")
        src = qd / "run" / "domains" / fps.pop() / "tokens"
        dst = out / name / "tokens"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        meta = json.loads((dst / "meta.json").read_text())
        domains = list(meta["domains"])
        natural = np.array([meta["tokens"]["train"][d] for d in domains], float)
        targets = {spec: _target_of(doc) for spec, doc in docs.items()}
        corpora[name] = {"tokens": str(dst.relative_to(out)), "domains": domains, "targets": targets}

        def add(tier: int, label: str, mix: dict[str, float], seed: int, corpus: str = name) -> None:
            tiers.setdefault(tier, []).append({"corpus": corpus, "name": label, "seed": seed, "mixture": mix})

        uniform = {d: 1.0 / len(domains) for d in domains}
        add(0, "uniform", uniform, 0)
        for spec, doc in docs.items():
            shipped = {d["name"]: d["weight"] for d in doc["domains"]}
            dec = doc.get("decision") or {}
            if dec.get("action") != "baseline":  # a shipped baseline is trained as the baseline itself
                add(0, f"chosen/{spec}", shipped, 0)
            if dec.get("action") != "optimum" and dec.get("optimum"):
                add(0, f"withheld/{spec}", dict(dec["optimum"]), 0)
        add(1, "natural", dict(zip(domains, (natural / natural.sum()).tolist())), 0)
        add(2, "uniform", uniform, 1)
        for spec, doc in docs.items():
            dec = doc.get("decision") or {}
            if dec.get("action") != "baseline":
                add(2, f"chosen/{spec}", {d["name"]: d["weight"] for d in doc["domains"]}, 1)
            if dec.get("action") != "optimum" and dec.get("optimum"):
                add(2, f"withheld/{spec}", dict(dec["optimum"]), 1)
        for i in range(N_RANDOM):
            w = np.random.default_rng(RANDOM_SEED_BASE + i).dirichlet(np.ones(len(domains)))
            add(3, f"random_{i}", dict(zip(domains, w.tolist())), 0)
    plan = {
        "model": SCALE_MODEL,
        "train": SCALE_TRAIN,
        "corpora": corpora,
        "runs": [r for t in sorted(tiers) for r in tiers[t]],
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    print(f"{out / 'plan.json'}: {len(plan['runs'])} runs over {', '.join(corpora)}")


def _key(run: dict) -> str:
    return f"{run['corpus']}|{run['name']}|{run['seed']}"


def train_plan(plan_path: Path, results_path: Path, budget_s: float, steps: int | None = None) -> None:
    import torch

    from moemix.moe_model import MoEConfig
    from moemix.token_shards import DomainTokens
    from moemix.training.config import TrainConfig
    from moemix.training.evaluate import evaluate
    from moemix.training.loop import train

    plan = json.loads(plan_path.read_text())
    root = plan_path.parent
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    started = time.time()
    per_run: list[float] = []
    for run in plan["runs"]:
        key = _key(run)
        if key in results:
            continue
        left = budget_s - (time.time() - started)
        if per_run and left < 1.2 * max(per_run):
            print(f"budget: {left:.0f} s left, a run takes ~{max(per_run):.0f} s; stopping", flush=True)
            break
        corpus = plan["corpora"][run["corpus"]]
        data = DomainTokens(root / corpus["tokens"])
        model_cfg = MoEConfig(vocab_size=data.vocab_size, **plan["model"])
        train_cfg = TrainConfig(**{**plan["train"], **({"steps": steps} if steps else {})}, seed=run["seed"])
        t0 = time.time()
        res = train(model_cfg, train_cfg, data, run["mixture"])
        ev = evaluate(
            res.model,
            data,
            seq_len=train_cfg.seq_len,
            eval_tokens=train_cfg.eval_tokens,
            batch_size=train_cfg.eval_batch_size,
        )
        dt = time.time() - t0
        per_run.append(dt)
        results[key] = {
            **run,
            "loss": ev.loss,
            "tokens": res.tokens,
            "params_total": res.params_total,
            "params_active": res.params_active,
            "seconds": round(dt, 1),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, results_path)
        print(f"{key}: {dt:.1f} s, mean loss {statistics.fmean(ev.loss.values()):.4f}", flush=True)
        del res
    print(f"{len(results)} of {len(plan['runs'])} runs done", flush=True)


def _loss(rec: dict, target: dict[str, float] | None) -> float:
    if target is None:
        return statistics.fmean(rec["loss"].values())
    s = sum(target.values())
    return sum(w / s * rec["loss"][d] for d, w in target.items())


def report(plan_path: Path, results_path: Path) -> None:
    plan = json.loads(plan_path.read_text())
    results = json.loads(results_path.read_text())
    any_rec = next(iter(results.values()))
    print(
        f"model: {plan['model']}; {any_rec['params_total'] / 1e6:.1f}M parameters "
        f"({any_rec['params_active'] / 1e6:.1f}M active), {any_rec['tokens']:,} tokens per run, "
        f"{any_rec['device']}"
    )
    for corpus, c in plan["corpora"].items():
        recs = [r for r in results.values() if r["corpus"] == corpus]
        if not recs:
            continue
        for spec, target in c["targets"].items():
            losses = {f"{r['name']}@{r['seed']}": _loss(r, target) for r in recs}
            relevant = {
                n: v
                for n, v in losses.items()
                if not n.startswith(("chosen/", "withheld/")) or n.split("@")[0].split("/", 1)[1] == spec
            }
            seed0 = {n: v for n, v in relevant.items() if n.endswith("@0")}
            order = sorted(seed0, key=seed0.get)
            print(f"\n{corpus}, target {spec}:")
            for n in sorted(relevant, key=relevant.get):
                rank = f"{order.index(n) + 1}/{len(order)}" if n in seed0 else "-"
                print(f"  {n:<28} {relevant[n]:.4f}  {rank}")
            uni = [v for n, v in relevant.items() if n.startswith("uniform@")]
            for kind in ("chosen", "withheld"):
                mine = {n.split("@")[1]: v for n, v in relevant.items() if n.startswith(f"{kind}/")}
                paired = [
                    relevant[f"uniform@{s}"] - v
                    for s, v in sorted(mine.items())
                    if f"uniform@{s}" in relevant
                ]
                if paired:
                    print(
                        f"  {kind} vs uniform, same-seed margins: "
                        + ", ".join(f"{m:+.4f}" for m in paired)
                        + (f"; uniform spread {max(uni) - min(uni):.4f}" if len(uni) > 1 else "")
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("quality_dirs", nargs="+", type=Path)
    a.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("train")
    b.add_argument("plan", type=Path)
    b.add_argument("--results", type=Path, required=True)
    b.add_argument("--budget-s", type=float, default=300.0)
    b.add_argument("--steps", type=int, help="override the plan's steps (a smoke test)")
    c = sub.add_parser("report")
    c.add_argument("plan", type=Path)
    c.add_argument("results", type=Path)
    args = p.parse_args()
    if args.cmd == "prepare":
        args.out.mkdir(parents=True, exist_ok=True)
        prepare(args.quality_dirs, args.out)
    elif args.cmd == "train":
        train_plan(args.plan, args.results, args.budget_s, args.steps)
    else:
        report(args.plan, args.results)


if __name__ == "__main__":
    main()
