"""Does the chosen mixture actually pretrain better? End-to-end mixture quality against baselines.

    .venv/bin/python benchmarks/bench_mixture_quality.py CONFIG --target mean --target code:1,prose:1

Method. For each ``--target`` (``mean`` = the mean validation loss of all domains, or a weighted set of
domains ``DOM:W,...``) the pipeline is run up to ``propose`` by the ``moemix`` CLI in a subprocess, all
targets in one run directory (``OUT/run``), so the domains stage (and proxies, where the target is not
part of their cache key) are built once. Each ``mixture.json`` is kept as ``OUT/mixture-<target>.json``.
Then the config's ``pretrain`` model is pretrained with ``pretrain.train`` (same steps and global batch,
hence the same token budget) on: each chosen mixture; uniform under ``--uniform-seeds`` training seeds
(``TrainConfig.seed`` changes init and data order: that is the noise floor); natural (each domain's
share of train tokens); and ``--random`` Dirichlet(1) mixtures drawn with ``default_rng(1000 + i)``
(fixed, so every re-run and every target sees the same ones). Every model is evaluated on every
domain's validation split, and each target's loss is computed from those per-domain losses, so the
baselines are trained once and scored under every target.

Per target it prints the ranking of chosen + uniform + natural + random, all at the first seed (1 =
best), the uniform seed spread (std, max-min), the chosen margin over uniform (the chosen mixture is
trained under ``--chosen-seeds`` seeds too: seed-mean minus seed-mean, and the same-seed differences),
and what mixture.json says about its own trust (predictor, CV Spearman, decision, notes). PASS means
rank 1 and a margin larger than the uniform max-min spread, i.e. larger than seed noise.

Why in-process and no Ray Train: ``moemix.training.loop.train`` at world size 1 with the same global
``batch_size`` trains on the same number of tokens per step and in total as the pipeline's
data-parallel Ray Train run (the batch is split across ranks there, gradients averaged); results are
not bit-identical (per-rank data order differs) but the budget is, and ``--jobs`` single-threaded runs
in parallel use a small machine better than Ray Train's gang-scheduled workers. Each run's result is
cached at ``OUT/pretrain/<key>.json`` with key = hash(mixture rounded to 9 decimals, model config,
train config incl. seed, tokens/meta.json): re-running the benchmark after a change to the mixture
search retrains only the chosen mixtures. The key does not include the moemix version: delete
``OUT/pretrain`` after changing the training loop or the model.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from moemix import load_mixture
from moemix._io import file_hash, stable_hash, write_json_atomic
from moemix.training.config import outcome_config

if TYPE_CHECKING:
    from moemix.mixing.schema import MixtureDoc

RANDOM_SEED_BASE = 1000
PIPELINE_STAGES = ("domains", "proxies", "fit", "propose")
MIXTURE_KNOWN = {
    "domains",
    "created_at",
    "moemix_version",
    "schema_version",
    "plots",
    "reports",
    "domains_fingerprint",
}


# ---------------------------------------------------------------- targets and the pipeline
def parse_target(spec: str) -> dict[str, float] | None:
    """``mean`` -> None (the config default: mean of all domains); ``a:1,b:2`` -> {a: 1, b: 2}."""
    if spec == "mean":
        return None
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, w = part.rpartition(":")
        if not sep or not name:
            raise SystemExit(f"--target {spec!r}: expected mean or DOM1:W1,DOM2:W2")
        out[name] = float(w)
    return out


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", spec).strip("-")


def target_loss(loss: dict[str, float], target: dict[str, float] | None) -> float:
    from moemix.training.evaluate import TargetConfig, target_weights

    w = target_weights(TargetConfig(domains=target), list(loss))
    return sum(wd * loss[d] for d, wd in w.items())


def run_pipeline(
    config: str | None, run_dir: Path, target: dict[str, float] | None, sets: list[str]
) -> dict[str, Any]:
    """``moemix run --until propose`` for one target; returns wall time and per-stage seconds (None =
    cached)."""
    cmd = [sys.executable, "-m", "moemix.cli", "run", *([config] if config else [])]
    cmd += ["--out", str(run_dir), "--until", "propose", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    if target is not None:  # JSON is a YAML flow mapping: what --set parses
        cmd += ["--set", f"proxies.target.domains={json.dumps(target)}"]
    print("$ " + " ".join(cmd), flush=True)
    started = time.time()
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"pipeline failed for target {target or 'mean'}")
    stages: dict[str, float | None] = {}
    for stage in PIPELINE_STAGES:  # a manifest written during this run = computed now, else cached
        fresh = [m for m in (run_dir / stage).glob("*/manifest.json") if m.stat().st_mtime >= started]
        stages[stage] = sum(json.loads(m.read_text())["seconds"] or 0.0 for m in fresh) if fresh else None
    return {"wall_s": round(time.time() - started, 1), "stages_s": stages}


def mixture_info(path: Path) -> dict[str, Any]:
    """What mixture.json says about the proposal, incl. fields this script does not know (guards,
    decisions)."""
    raw = json.loads(path.read_text())
    return {k: v for k, v in raw.items() if k not in MIXTURE_KNOWN}


# ---------------------------------------------------------------- pretraining (cached, in-process)
def baseline_runs(
    domains: list[str], train_tokens: dict[str, int], seed0: int, uniform_seeds: int, n_random: int
) -> dict[str, tuple[dict[str, float], int]]:
    """The baselines every target is scored against, name -> (mixture, seed): uniform under
    ``uniform_seeds`` seeds (``uniform@seed<s>``), natural (each domain's share of train tokens) and
    ``n_random`` Dirichlet(1) mixtures drawn with ``default_rng(1000 + i)`` (``random_<i>``), at ``seed0``.
    Other scripts build them here too, so their runs share this benchmark's cache."""
    natural = np.array([train_tokens[d] for d in domains], dtype=np.float64)
    runs = {
        f"uniform@seed{seed0 + s}": ({d: 1.0 / len(domains) for d in domains}, seed0 + s)
        for s in range(max(1, uniform_seeds))
    }
    runs["natural"] = (dict(zip(domains, (natural / natural.sum()).tolist())), seed0)
    for i in range(n_random):
        w = np.random.default_rng(RANDOM_SEED_BASE + i).dirichlet(np.ones(len(domains)))
        runs[f"random_{i}"] = (dict(zip(domains, w.tolist())), seed0)
    return runs


def run_key(mixture: dict[str, float], model_cfg: Any, train_cfg: Any, tokens_fp: str) -> str:
    total = sum(mixture.values())
    tc = outcome_config(train_cfg)  # without the fields that do not change what is learned
    mix = {d: round(w / total, 9) for d, w in sorted(mixture.items())}
    return stable_hash({"mixture": mix, "model": model_cfg, "train": tc, "tokens": tokens_fp})


def pretrain_one(
    model_cfg: Any, train_cfg: Any, tokens_dir: str, mixture: dict[str, float], out: str
) -> dict[str, Any]:
    """Train one model on ``mixture`` and evaluate it on every domain (runs in a worker process)."""
    import torch

    from moemix.proxies.run import model_config_for_data
    from moemix.token_shards import DomainTokens
    from moemix.training.evaluate import TargetConfig, evaluate
    from moemix.training.loop import train

    torch.set_num_threads(max(1, train_cfg.num_threads))
    data = DomainTokens(tokens_dir)
    model_cfg = model_config_for_data(model_cfg, data.vocab_size, train_cfg.seq_len)
    started = time.time()
    res = train(model_cfg, train_cfg, data, mixture)
    ev = evaluate(
        res.model,
        data,
        TargetConfig(),
        seq_len=train_cfg.seq_len,
        eval_tokens=train_cfg.eval_tokens,
        batch_size=train_cfg.eval_batch_size,
    )
    rec = {
        "mixture": mixture,
        "seed": train_cfg.seed,
        "loss": ev.loss,
        "bpb": ev.bpb,
        "tokens": res.tokens,
        "final_train_loss": res.final_loss,
        "epochs": res.epochs,
        "params_active": res.params_active,
        "params_total": res.params_total,
        "train_s": res.seconds,
        "seconds": time.time() - started,
    }
    write_json_atomic(out, rec)
    return rec


def pretrain_all(
    runs: dict[str, tuple[dict[str, float], int]],
    model_cfg: Any,
    train_cfg: Any,
    tokens_dir: Path,
    cache: Path,
    jobs: int = 2,
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """``runs``: name -> (mixture, train seed). Trains the uncached ones, ``jobs`` at a time; name ->
    result."""
    tokens_fp = file_hash(tokens_dir / "meta.json")
    keys = {
        name: run_key(mix, model_cfg, replace(train_cfg, seed=seed), tokens_fp)
        for name, (mix, seed) in runs.items()
    }
    todo = {
        k: name for name, k in keys.items() if not (cache / f"{k}.json").exists()
    }  # one run per distinct key
    print(
        f"pretrain: {len(runs)} runs, {len(runs) - len(todo)} cached, {len(todo)} to train ({jobs} at a "
        "time)",
        flush=True,
    )
    if todo:
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = {}
            for k, name in todo.items():
                mix, seed = runs[name]
                tc = replace(train_cfg, seed=seed, num_threads=threads)
                futs[
                    pool.submit(pretrain_one, model_cfg, tc, str(tokens_dir), mix, str(cache / f"{k}.json"))
                ] = name
            for fut in cf.as_completed(futs):
                rec = fut.result()
                print(
                    f"  trained {futs[fut]:<22} {rec['seconds']:7.1f}s  {rec['tokens']:,} tokens", flush=True
                )
    out = {}
    for name, k in keys.items():
        rec = json.loads((cache / f"{k}.json").read_text())
        out[name] = {**rec, "key": k, "cached": k not in todo}
    return out


# ---------------------------------------------------------------- scoring
def score(
    results: dict[str, dict[str, Any]],
    ranked: list[str],
    uniform: list[str],
    chosen: list[str],
    target: dict[str, float] | None,
) -> dict[str, Any]:
    """Rank of the chosen mixture's first seed among ``ranked`` (all at that seed), and its margin over
    uniform: seed-mean minus seed-mean, each seed of the chosen mixture paired with the same seed of
    uniform."""
    losses = {name: target_loss(r["loss"], target) for name, r in results.items()}
    order = sorted(ranked, key=lambda n: losses[n])
    ranks = {n: 1 + sum(losses[m] < losses[n] for m in ranked) for n in ranked}
    u = [losses[n] for n in uniform]
    c = [losses[n] for n in chosen]
    spread = max(u) - min(u)
    margin = statistics.fmean(u) - statistics.fmean(c)
    paired = [losses[un] - losses[cn] for un, cn in zip(uniform, chosen)]
    return {
        "losses": losses,
        "order": order,
        "ranks": ranks,
        "rank": ranks[chosen[0]],
        "n_ranked": len(ranked),
        "uniform_std": statistics.stdev(u) if len(u) > 1 else 0.0,
        "uniform_spread": spread,
        "chosen_seeds": c,
        "paired_margins": paired,
        "margin_vs_uniform": margin,
        "pass": margin > spread and ranks[chosen[0]] == 1,
    }


def print_target(spec: str, sc: dict[str, Any], doc: MixtureDoc, info: dict[str, Any]) -> None:
    print(f"\n=== target {spec}: {doc.target.description or ''}")
    width = max(len(n) for n in sc["losses"])
    print(f"{'mixture':<{width}} {'target loss':>11} {'rank':>5}")
    for name, loss in sorted(sc["losses"].items(), key=lambda kv: kv[1]):
        rank = f"{sc['ranks'][name]}/{sc['n_ranked']}" if name in sc["ranks"] else "-"  # "-": not ranked
        print(f"{name:<{width}} {loss:11.4f} {rank:>5}")
    print(f"uniform seed spread: std {sc['uniform_std']:.4f}, max-min {sc['uniform_spread']:.4f}")
    verdict = ">" if sc["pass"] else "<="
    print(
        f"chosen margin vs uniform, seed-mean over {len(sc['chosen_seeds'])} seeds each: "
        f"{sc['margin_vs_uniform']:+.4f} ({verdict} spread); same-seed margins "
        + ", ".join(f"{m:+.4f}" for m in sc["paired_margins"])
    )
    if "withheld" in sc:
        w = sc["withheld"]
        print(
            f"withheld optimum (the guard's audit): rank {w['rank']}/{sc['n_ranked']}, margin vs uniform "
            f"{w['margin_vs_uniform']:+.4f}; same-seed margins "
            + ", ".join(f"{m:+.4f}" for m in w["paired_margins"])
        )
    print(
        "chosen weights: "
        + ", ".join(f"{d.name} {d.weight:.3f}" for d in sorted(doc.domains, key=lambda d: -d.weight))
    )
    for k, v in info.items():
        if k == "notes" and v:
            print("notes:\n" + "\n".join(f"  - {n}" for n in v))
        elif k not in ("notes", "target"):
            print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="corpus config YAML (default: the built-in demo preset)")
    p.add_argument("--out", type=Path, help="benchmark directory (default: runs/quality-<config name>)")
    p.add_argument("--target", action="append", help="mean or DOM1:W1,DOM2:W2 (repeatable; default: mean)")
    p.add_argument("--random", type=int, default=8, help="Dirichlet(1) random mixtures (seeds 1000+i)")
    p.add_argument("--uniform-seeds", type=int, default=3, help="training seeds of the uniform mixture")
    p.add_argument(
        "--chosen-seeds",
        type=int,
        default=3,
        help="training seeds of each chosen mixture (its margin is a seed-mean, paired with uniform's)",
    )
    p.add_argument("--jobs", type=int, default=2, help="pretraining runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per pretraining run")
    p.add_argument("--json", type=Path, help="results file (default: OUT/quality.json)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the pipeline and pretraining (repeatable)",
    )
    args = p.parse_args(argv)
    out = (
        args.out or Path("runs") / f"quality-{Path(args.config).stem if args.config else 'demo'}"
    ).resolve()
    run_dir, specs = out / "run", args.target or ["mean"]
    targets = {spec: parse_target(spec) for spec in specs}
    walls: dict[str, Any] = {}
    docs: dict[str, MixtureDoc] = {}
    infos: dict[str, dict[str, Any]] = {}
    for spec, target in targets.items():
        walls[f"pipeline/{spec}"] = run_pipeline(args.config, run_dir, target, args.set)
        kept = out / f"mixture-{slug(spec)}.json"
        kept.write_bytes((run_dir / "mixture.json").read_bytes())
        docs[spec], infos[spec] = load_mixture(kept), mixture_info(kept)
    from moemix.configtools import from_dict
    from moemix.pipeline.config import PretrainConfig

    # the pretrain section of what the pipeline ran (--set included); only it matters here
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    pretrain = from_dict(PretrainConfig, resolved.get("pretrain"), where="pretrain")
    fps = {d.domains_fingerprint for d in docs.values()}
    if len(fps) != 1:
        raise SystemExit(
            f"targets used different domains stages {sorted(map(str, fps))}: cannot share baselines"
        )
    dom_dir = run_dir / "domains" / str(fps.pop())
    dom_out = json.loads((dom_dir / "manifest.json").read_text())["outputs"]
    domains, train_tokens = list(dom_out["domains"]), dom_out["train_tokens"]

    seed0, tcfg = pretrain.train.seed, pretrain.train
    chosen = {
        spec: [
            f"chosen/{spec}" + (f"@seed{seed0 + s}" if s else "") for s in range(max(1, args.chosen_seeds))
        ]
        for spec in specs
    }
    runs: dict[str, tuple[dict[str, float], int]] = {
        name: (docs[spec].weights, seed0 + s) for spec in specs for s, name in enumerate(chosen[spec])
    }
    # the guard's audit: when it shrank or withheld the fit's optimum, pretrain that optimum too (same
    # seeds as the chosen mixture), so the table says whether withholding it was right
    withheld: dict[str, list[str]] = {}
    for spec in specs:
        dec = docs[spec].decision
        if dec is not None and dec.action != "optimum" and dec.optimum:
            withheld[spec] = [n.replace("chosen/", "withheld/", 1) for n in chosen[spec]]
            for s, name in enumerate(withheld[spec]):
                runs[name] = (dict(dec.optimum), seed0 + s)
    base_runs = baseline_runs(domains, train_tokens, seed0, args.uniform_seeds, args.random)
    runs.update(base_runs)
    uniform = [n for n in base_runs if n.startswith("uniform@")]
    print(
        f"\npretrain model {pretrain.model}\n{tcfg.num_steps} steps x {tcfg.tokens_per_step} tokens = "
        f"{tcfg.planned_tokens:,} tokens per run"
    )
    started = time.time()
    results = pretrain_all(
        runs, pretrain.model, tcfg, dom_dir / "tokens", out / "pretrain", jobs=args.jobs, threads=args.threads
    )
    walls["pretrain"] = {
        "wall_s": round(time.time() - started, 1),
        "runs_s": {n: None if r["cached"] else round(r["seconds"], 1) for n, r in results.items()},
    }

    baselines = [uniform[0], "natural", *(f"random_{i}" for i in range(args.random))]
    scores = {
        spec: score(results, [f"chosen/{spec}", *baselines], uniform, chosen[spec], t)
        for spec, t in targets.items()
    }
    for spec, names in withheld.items():  # how the optimum the guard withheld would have done
        audit = score(results, [names[0], *baselines], uniform, names, targets[spec])
        scores[spec]["withheld"] = {
            k: audit[k] for k in ("rank", "chosen_seeds", "paired_margins", "margin_vs_uniform")
        }
    for spec in specs:
        print_target(spec, scores[spec], docs[spec], infos[spec])
    print("\nwall time:")
    for k, v in walls.items():
        parts = v.get("stages_s") or v["runs_s"]
        detail = ", ".join(f"{s} {'cached' if t is None else f'{t:.1f}s'}" for s, t in parts.items())
        print(f"  {k:<{max(map(len, walls))}} {v['wall_s']:8.1f}s  {detail}")
    write_json_atomic(
        args.json or out / "quality.json",
        {
            "config": args.config,
            "targets": {
                s: {"target": targets[s], "mixture": infos[s] | {"weights": docs[s].weights}, **scores[s]}
                for s in specs
            },
            "runs": results,
            "domains": domains,
            "tokens_dir": str(dom_dir / "tokens"),
            "wall": walls,
        },
    )
    print()
    for spec in specs:
        sc = scores[spec]
        print(
            f"target={spec} chosen rank {sc['rank']}/{sc['n_ranked']} margin vs uniform "
            f"{sc['margin_vs_uniform']:+.4f} "
            f"(spread {sc['uniform_spread']:.4f}) -> {'PASS' if sc['pass'] else 'FAIL'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
