"""The whole pipeline on Ray: binds the Ray runners (swarm, Ray Data assignment, Ray Train) to the stages.

Ray is started lazily, only when a stage that needs it has work to do, so a re-run whose stages are
all cached finishes in seconds and trains nothing.
"""

from __future__ import annotations

import logging
import os
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
    check_repetition_budget,
    check_target,
    domains_stage,
    fit_stage,
    given_mixture,
    pretrain_stage,
    propose_stage,
    proxies_stage,
    publish_mixture,
    source_stats,
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
    if cfg.tracking.mlflow_uri:
        from moemix.report.tracking import require_mlflow

        require_mlflow()  # one line now, not a warning after the training
    # absolute: Ray workers (Ray Train's above all) do not share the driver's working directory
    run_dir = Path(run_dir).resolve()
    # a second run on this directory stops here with one line; a killed run's lock is simply taken over
    with RunLock(run_dir):
        res = _run_stages(cfg, run_dir, last, progress, None if mixture is None else Path(mixture))
        _report(cfg, res, given_mixture=mixture is not None)
        return res


def _report(cfg: Config, res: PipelineResult, given_mixture: bool) -> None:
    """RUN_DIR/report.html of the stages this run just went through (not for a pretraining of a given
    mixture: that is not the run dir's proposal), and the run in MLflow when ``tracking.mlflow_uri`` is
    set. Either failing is a warning, not a failed run: the results are already on disk, and
    ``moemix report`` or the next re-run retries."""
    outputs = {"domains": res.domains, "proxies": res.proxies, "fit": res.fit, "propose": res.propose}
    outputs["pretrain"] = res.pretrain
    stages = {name: out.stage.path for name, out in outputs.items() if out is not None}
    if not given_mixture:
        from moemix.report import write_report

        try:
            log.info("report written to %s", write_report(res.run_dir, stages))
        except Exception as e:  # any failure: see the docstring
            log.warning("report.html not written: %s: %s", type(e).__name__, e)
    if cfg.tracking.mlflow_uri:
        from moemix.report.tracking import log_to_mlflow

        try:
            log_to_mlflow(cfg.tracking, res.run_dir, stages)
        except Exception as e:  # a tracking server down must not fail a finished run
            log.warning("mlflow: run not logged to %s: %s: %s", cfg.tracking.mlflow_uri, type(e).__name__, e)


def _run_stages(
    cfg: Config, run_dir: Path, last: int, progress: bool, mixture: Path | None
) -> PipelineResult:
    write_text_atomic(run_dir / "config.resolved.yaml", dump_config(cfg))
    res = PipelineResult(run_dir=run_dir)
    lazy = _LazyRay(cfg)
    try:
        res.domains = domains_stage(cfg, run_dir, executor=_domains_executor(cfg, lazy), progress=progress)
        if mixture is not None:
            source = given_mixture(mixture, res.domains)  # one line if it does not fit the domains
            res.pretrain = pretrain_stage(cfg, run_dir, res.domains, source, _pretrain_runner(cfg, lazy))
            _log_comparison(res.pretrain)
            return res
        if last < 1:
            return res
        if last >= STAGES.index("fit") or cfg.proxies.rounds != 1:
            check_target(cfg, res.domains)  # rounds after the first are sampled from a fit of the target
        if last >= STAGES.index("propose"):
            check_repetition_budget(cfg, res.domains)

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
    def run(mixtures, tokens_dir, run_dirs):
        from moemix.ray_jobs.pretrain import pretrain_mixtures

        lazy.ensure()
        return pretrain_mixtures(
            cfg.pretrain, cfg.proxies.target, mixtures, tokens_dir, run_dirs, seed=cfg.seed
        )

    return run


AUTO_RAY_DOMAINS_BYTES = 256 << 20


def _domains_executor(cfg: Config, lazy: _LazyRay):
    """The domains stage's executor: Ray Data workers, or None (this process) for small local inputs,
    where starting actors would cost more than the work."""
    d = cfg.domains
    if d.executor == "local":
        return None
    if d.executor == "auto":
        on_cluster = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        n_bytes = sum(f[1] for s in source_stats(cfg) for f in s.get("files", []))
        if not on_cluster and n_bytes < AUTO_RAY_DOMAINS_BYTES:
            return None

    def run(fn, units, *, what=""):
        from moemix.ray_jobs.data import ray_data_executor

        lazy.ensure()
        return ray_data_executor(d.num_workers, d.cpus_per_worker, d.gpus_per_worker)(fn, units, what=what)

    return run


def _log_comparison(pre: PretrainOutput) -> None:
    comp = pre.comparison
    for name in ("chosen", "uniform", "natural"):
        if name in comp:
            log.info("pretrain %-7s target loss %.4f", name, comp[name]["target_loss"])
