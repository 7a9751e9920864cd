"""The pipeline's stages as plain functions: config + earlier stage outputs in, stage output out.

Each function finds its content-addressed directory, returns at once when it is complete, and
otherwise does the work and writes the manifest last. The two stages that need a cluster take the
runner as an argument (``swarm_runner``, ``pretrain_runner``), so everything here runs and is tested
without Ray; ``moemix.ray_jobs.pipeline`` binds the Ray implementations.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moemix import __version__
from moemix._io import stable_hash
from moemix.errors import MoemixError
from moemix.pipeline.config import Config
from moemix.pipeline.stage import Stage, stage_for
from moemix.proxies.shards import DomainTokens

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- domains
@dataclass(frozen=True)
class DomainsOutput:
    stage: Stage
    domains: list[str]
    train_tokens: dict[str, int]

    @property
    def tokens_dir(self) -> Path:
        return self.stage.path / "tokens"

    @property
    def fingerprint(self) -> str:
        return self.stage.key

    def prior(self) -> np.ndarray:
        """Natural mixture: each domain's share of training tokens."""
        tok = np.array([self.train_tokens[d] for d in self.domains], dtype=np.float64)
        return tok / tok.sum()


def source_fingerprint(cfg: Config) -> list[dict[str, Any]]:
    """Size and mtime of every input file, so edited data invalidates the domains stage."""
    out = []
    for src in cfg.domains.sources:
        path = getattr(src, "path", None)
        if not path:
            out.append({"hub": getattr(src, "hub", None)})
            continue
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else sorted(p.parent.glob(p.name))
        out.append({"path": str(p), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]})
    return out


def domains_stage(cfg: Config, run_dir: Path, assign_fn: Callable | None = None, progress: bool = True) -> DomainsOutput:
    from moemix.pipeline.domains import run_domains

    stage = stage_for(run_dir, "domains", {"domains": cfg.domains, "seed": cfg.seed}, {"sources": stable_hash(source_fingerprint(cfg))})
    if not stage.is_complete():
        log.info("domains: building %s", stage.path)
        started = time.time()
        stage.start(fresh=True)
        res = run_domains(cfg.domains, stage.path, seed=cfg.seed, assign_fn=assign_fn, progress=progress)
        stage.complete({"domains": list(res.domains), "train_tokens": _train_tokens(stage.path)}, started)
    else:
        log.info("domains: cached at %s", stage.path)
    out = stage.manifest()["outputs"]
    return DomainsOutput(stage=stage, domains=list(out["domains"]), train_tokens=dict(out["train_tokens"]))


def _train_tokens(stage_path: Path) -> dict[str, int]:
    data = DomainTokens(stage_path / "tokens")
    return {d: data.n_tokens("train", d) for d in data.domains}


# ---------------------------------------------------------------- proxies
@dataclass(frozen=True)
class ProxiesOutput:
    stage: Stage
    runs_path: Path
    n_ok: int
    n_failed: int
    scale_transfer: dict[str, Any] | None


def proxy_specs(cfg: Config, domains: DomainsOutput, stage: Stage) -> list[Any]:
    """The swarm: sampled mixtures (uniform and natural first), each a content-addressed proxy run."""
    from moemix.mixing.sampling import sample_mixtures
    from moemix.proxies.run import make_specs

    pcfg = cfg.proxies
    tokens_per_run = pcfg.train.tokens_per_run()
    mixtures = sample_mixtures(
        domains.prior(),
        pcfg.sampler,
        seed=cfg.seed,
        domain_tokens=np.array([domains.train_tokens[d] for d in domains.domains], dtype=np.float64),
        tokens_per_run=tokens_per_run,
    )
    return make_specs(pcfg, domains.domains, mixtures, domains.tokens_dir, stage.path, domains_fingerprint=domains.fingerprint)


def proxies_stage(cfg: Config, run_dir: Path, domains: DomainsOutput, swarm_runner: Callable[[list[Any]], Any]) -> ProxiesOutput:
    from moemix.proxies.run import collect_runs, scale_transfer_report

    stage = stage_for(run_dir, "proxies", {"proxies": cfg.proxies, "seed": cfg.seed}, {"domains": domains.stage.key})
    if not stage.is_complete():
        started = time.time()
        stage.start()  # never fresh: finished proxies under runs/ are kept and skipped
        specs = proxy_specs(cfg, domains, stage)
        log.info("proxies: %d runs under %s", len(specs), stage.path)
        swarm_runner(specs)
        runs = collect_runs(stage.path)
        if runs.empty:
            raise MoemixError(f"proxies: the swarm left no result.json under {stage.path / 'runs'}")
        n_ok = int((runs["status"] == "ok").sum())
        if n_ok == 0:
            raise MoemixError(f"proxies: all {len(runs)} proxy runs failed; first error: {runs['error'].iloc[0]}")
        stage.complete(
            {
                "runs": "runs.parquet",
                "n_ok": n_ok,
                "n_failed": int((runs["status"] != "ok").sum()),
                "scale_transfer": scale_transfer_report(runs),
            },
            started,
        )
    out = stage.manifest()["outputs"]
    return ProxiesOutput(stage, stage.path / out["runs"], out["n_ok"], out["n_failed"], out.get("scale_transfer"))


# ---------------------------------------------------------------- fit
@dataclass(frozen=True)
class FitOutput:
    stage: Stage


def fit_stage(cfg: Config, run_dir: Path, domains: DomainsOutput, proxies: ProxiesOutput) -> FitOutput:
    from moemix.mixing.fit import fit_runs

    stage = stage_for(run_dir, "fit", {"fit": cfg.fit, "seed": cfg.seed}, {"proxies": proxies.stage.key})
    if not stage.is_complete():
        started = time.time()
        stage.start(fresh=True)
        runs = pd.read_parquet(proxies.runs_path)
        base = runs[runs["scale"] == "base"] if "scale" in runs else runs
        result = fit_runs(
            base,
            target="target",
            weight_cols=[f"w/{d}" for d in domains.domains],
            cfg=cfg.fit,
            out_dir=stage.path,
            prior=domains.prior(),
            domain_tokens=np.array([domains.train_tokens[d] for d in domains.domains], dtype=np.float64),
            where=str(proxies.runs_path),
        )
        stage.complete({"predictor": result.cv.get("predictor"), "cv_spearman": result.cv.get("spearman")}, started)
    return FitOutput(stage)


# ---------------------------------------------------------------- propose
@dataclass(frozen=True)
class ProposeOutput:
    stage: Stage

    @property
    def mixture_path(self) -> Path:
        return self.stage.path / "mixture.json"


def propose_stage(cfg: Config, run_dir: Path, domains: DomainsOutput, proxies: ProxiesOutput, fit: FitOutput) -> ProposeOutput:
    from moemix.mixing.fit import load_fit
    from moemix.mixing.propose import proposal_to_doc, propose
    from moemix.mixing.report import plot_mixture
    from moemix.mixing.schema import write_mixture

    stage = stage_for(run_dir, "propose", {"propose": cfg.propose, "seed": cfg.seed}, {"fit": fit.stage.key, "domains": domains.stage.key})
    if not stage.is_complete():
        started = time.time()
        stage.start(fresh=True)
        fitted = load_fit(fit.stage.path)
        domain_tokens = np.array([domains.train_tokens[d] for d in domains.domains], dtype=np.float64)
        target_tokens = cfg.pretrain.train.tokens_per_run() if cfg.pretrain.enabled else None
        proposal = propose(fitted, domains.prior(), cfg.propose, domain_tokens=domain_tokens, target_tokens=target_tokens)
        plots = {}
        if cfg.fit.plots:
            plot_mixture(list(proposal.domains), proposal.weights, domains.prior(), stage.path / "mixture.png")
            # paths relative to RUN_DIR/mixture.json, the copy users consume
            plots["mixture"] = f"propose/{stage.key}/mixture.png"
            plots.update({k: f"fit/{fit.stage.key}/{v}" for k, v in fitted.plots.items()})
        doc = proposal_to_doc(
            proposal,
            fitted,
            domain_tokens=domain_tokens,
            domains_fingerprint=domains.fingerprint,
            target_description=_target_description(cfg),
            plots=plots,
            scale_transfer=scale_transfer_summary(proxies.scale_transfer),
        )
        write_mixture(stage.path / "mixture.json", doc)
        stage.complete({"mixture": "mixture.json"}, started)
    return ProposeOutput(stage)


SCALE_TRANSFER_WARN_BELOW = 0.8


def scale_transfer_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The swarm's base-vs-large rank agreement as mixture.json reports it, with a warning when low."""
    if not report:
        return None
    rho, n = report["target"]["spearman"], int(report["target"]["n"])
    rho = None if rho is None or math.isnan(rho) else float(rho)
    warning = None
    if rho is None:
        warning = f"only {n} mixtures trained at both scales: no rank correlation"
    elif rho < SCALE_TRANSFER_WARN_BELOW:
        warning = (
            f"proxy rankings transfer poorly to the larger proxy (Spearman {rho:.2f} < {SCALE_TRANSFER_WARN_BELOW}); "
            "consider larger proxies"
        )
    if warning:
        log.warning("scale check: %s", warning)
    return {"spearman": rho, "n": n, "warning": warning}


def _target_description(cfg: Config) -> str:
    t = cfg.proxies.target
    if getattr(t, "external", None):
        return f"external:{t.external}"
    if getattr(t, "domains", None):
        return "weighted:" + ",".join(f"{k}={v:g}" for k, v in sorted(t.domains.items()))
    return "mean of all domains' validation loss"


def publish_mixture(propose_out: ProposeOutput, run_dir: Path) -> Path:
    """Copy the chosen mixture to RUN_DIR/mixture.json (atomically), where users look for it."""
    from moemix._io import atomic_path

    dest = Path(run_dir) / "mixture.json"
    with atomic_path(dest) as tmp:
        shutil.copyfile(propose_out.mixture_path, tmp)
    return dest


# ---------------------------------------------------------------- pretrain
@dataclass(frozen=True)
class PretrainOutput:
    stage: Stage
    comparison: dict[str, Any]


def pretrain_stage(
    cfg: Config,
    run_dir: Path,
    domains: DomainsOutput,
    propose_out: ProposeOutput,
    pretrain_runner: Callable[[dict[str, dict[str, float]], Path, Path], dict[str, dict[str, Any]]],
) -> PretrainOutput:
    """Pretrain on the chosen mixture and, with the same tokens, on the uniform one.

    ``pretrain_runner(mixtures, tokens_dir, out_dir) -> {name: result dict}`` trains each named mixture
    under ``out_dir/<name>/`` (resuming from its checkpoint) and returns its final validation losses.
    """
    from moemix.mixing.schema import load_mixture

    doc = load_mixture(propose_out.mixture_path)
    stage = stage_for(run_dir, "pretrain", {"pretrain": cfg.pretrain, "target": cfg.proxies.target, "seed": cfg.seed}, {"propose": propose_out.stage.key, "domains": domains.stage.key})
    if not stage.is_complete():
        started = time.time()
        stage.start()  # never fresh: checkpoints inside are how a crashed run resumes
        mixtures = {"chosen": doc.weights}
        if cfg.pretrain.compare_uniform:
            mixtures["uniform"] = {d: 1.0 / len(domains.domains) for d in domains.domains}
        results = pretrain_runner(mixtures, domains.tokens_dir, stage.path)
        comparison = {
            name: {"target_loss": r["target_loss"], "target_bpb": r.get("target_bpb"), "tokens": r.get("tokens"), "checkpoint": r.get("checkpoint")}
            for name, r in results.items()
        }
        if "uniform" in comparison:
            comparison["improvement_vs_uniform"] = comparison["uniform"]["target_loss"] - comparison["chosen"]["target_loss"]
        comparison["moemix_version"] = __version__
        from moemix._io import write_json_atomic

        write_json_atomic(stage.path / "comparison.json", comparison)
        stage.complete({"comparison": comparison}, started)
    return PretrainOutput(stage, stage.manifest()["outputs"]["comparison"])
