"""The whole pipeline on Ray: binds the Ray runners (swarm, Ray Data assignment, Ray Train) to the stages.

Ray is started lazily, only when a stage that needs it has work to do, so a re-run whose stages are
all cached finishes in seconds and trains nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import ray

from moemix._io import write_text_atomic
from moemix.pipeline import STAGES
from moemix.pipeline.config import Config, dump_config
from moemix.pipeline.memory import check_pretrain_memory
from moemix.pipeline.run_lock import RunLock
from moemix.pipeline.stages import (
    DomainsOutput,
    FitOutput,
    PretrainOutput,
    ProposeOutput,
    ProxiesOutput,
    annotate_mixture,
    domains_stage,
    fit_stage,
    given_mixture,
    pretrain_stage,
    propose_stage,
    proxies_stage,
    publish_mixture,
)
from moemix.ray_jobs.ray_init import init_ray

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run_dir: Path
    domains: DomainsOutput | None = None
    proxies: ProxiesOutput | None = None
    fit: FitOutput | None = None
    propose: ProposeOutput | None = None
    pretrain: PretrainOutput | None = None
    mixture_path: Path | None = None


class _LazyRay:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.started_here = False

    def ensure(self) -> None:
        if not ray.is_initialized():
            self.started_here = init_ray(self.cfg.ray)

    def close(self) -> None:
        if self.started_here and ray.is_initialized():
            ray.shutdown()


def run_pipeline(
    cfg: Config,
    run_dir: str | Path,
    until: str = "pretrain",
    progress: bool = True,
    mixture: str | Path | None = None,
) -> PipelineResult:
    """Run the stages up to ``until``. With ``mixture`` (a mixture.json or a domain -> weight mapping),
    pretrain on it instead: only the domains and pretrain stages run."""
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}")
    if mixture is not None and until != "pretrain":
        raise ValueError("a given mixture is for the pretrain stage")
    last = STAGES.index(until)
    if last == STAGES.index("pretrain"):
        check_pretrain_memory(cfg)  # before anything is written or launched: one line, not a late OOM
    # absolute: Ray workers (Ray Train's above all) do not share the driver's working directory
    run_dir = Path(run_dir).resolve()
    # a second run on this directory stops here with one line; a killed run's lock is simply taken over
    with RunLock(run_dir):
        return _run_stages(cfg, run_dir, last, progress, None if mixture is None else Path(mixture))


def _run_stages(
    cfg: Config, run_dir: Path, last: int, progress: bool, mixture: Path | None
) -> PipelineResult:
    write_text_atomic(run_dir / "config.resolved.yaml", dump_config(cfg))
    res = PipelineResult(run_dir=run_dir)
    lazy = _LazyRay(cfg)
    try:
        res.domains = domains_stage(cfg, run_dir, assign_fn=_assign_fn(cfg, lazy), progress=progress)
        if mixture is not None:
            source = given_mixture(mixture, res.domains)  # one line if it does not fit the domains
            res.pretrain = pretrain_stage(cfg, run_dir, res.domains, source, _pretrain_runner(cfg, lazy))
            _log_comparison(res.pretrain)
            return res
        if last < 1:
            return res

        def swarm_runner(specs):
            from moemix.ray_jobs.swarm import run_swarm

            lazy.ensure()
            return run_swarm(
                specs,
                num_cpus_per_proxy=cfg.proxies.num_cpus_per_proxy,
                num_gpus_per_proxy=cfg.proxies.num_gpus_per_proxy,
                max_retries=cfg.proxies.max_retries,
                transient_retries=cfg.proxies.transient_retries,
                progress=progress,
            )

        res.proxies = proxies_stage(cfg, run_dir, res.domains, swarm_runner)
        if last < 2:
            return res
        res.fit = fit_stage(cfg, run_dir, res.domains, res.proxies)
        if last < 3:
            return res
        res.propose = propose_stage(cfg, run_dir, res.domains, res.proxies, res.fit)
        res.mixture_path = publish_mixture(res.propose, run_dir)
        log.info("mixture.json written to %s", res.mixture_path)
        if last < 4 or not cfg.pretrain.enabled:
            return res

        res.pretrain = pretrain_stage(cfg, run_dir, res.domains, res.propose, _pretrain_runner(cfg, lazy))
        annotate_mixture(res.mixture_path, res.pretrain.comparison)
        _log_comparison(res.pretrain)
        return res
    finally:
        lazy.close()


def _pretrain_runner(cfg: Config, lazy: _LazyRay):
    def run(mixtures, tokens_dir, out_dir):
        from moemix.ray_jobs.pretrain import pretrain_mixtures

        lazy.ensure()
        return pretrain_mixtures(
            cfg.pretrain, cfg.proxies.target, mixtures, tokens_dir, out_dir, seed=cfg.seed
        )

    return run


def _assign_fn(cfg: Config, lazy: _LazyRay):
    if cfg.domains.mode == "label":
        return None

    def assign(model_dir, in_files, out_dir):
        from moemix.ray_jobs.data import assign_parquet_ray

        lazy.ensure()
        return assign_parquet_ray(model_dir, in_files, out_dir)

    return assign


def _log_comparison(pre: PretrainOutput) -> None:
    comp = pre.comparison
    for name in ("chosen", "uniform", "natural"):
        if name in comp:
            log.info("pretrain %-7s target loss %.4f", name, comp[name]["target_loss"])
