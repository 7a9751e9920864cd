"""The pipeline's stages as plain functions: config + earlier stage outputs in, stage output out.

Each function finds its content-addressed directory, returns at once when it is complete, and
otherwise does the work and writes the manifest last. The two stages that need a cluster take the
runner as an argument (``swarm_runner``, ``pretrain_runner``), so everything here runs and is tested
without Ray; ``moemix.ray_jobs.pipeline`` binds the Ray implementations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moemix import __version__
from moemix._io import stable_hash, write_json_atomic
from moemix.config_fields import outcome_view
from moemix.errors import MoemixError
from moemix.mixing.schema import PretrainCheck
from moemix.mixing.transfer import transfer_summary
from moemix.pipeline.config import Config
from moemix.pipeline.stage_dir import Stage, stage_for
from moemix.token_shards import DomainTokens

log = logging.getLogger(__name__)

# Each stage's key carries a format number instead of the package version (Marin's "version" field):
# raise a stage's number when a code change alters what that stage writes, and only that stage (and
# the ones downstream, through their inputs) re-runs. The fit and propose stages keep theirs next to
# their code (FIT_FORMAT, PROPOSE_FORMAT).
DOMAINS_FORMAT = 2  # 2: hash-partitioned work units, domains in parts
SWARM_FORMAT = 2  # 2: a round's batch comes from the fit stage's own fit (seed noise, model-size term)
# how a later round's batch is picked; only swarms with rounds hold such batches, so only they key on it
NEXT_BATCH_FORMAT = 2  # 2: half the batch around the proposer's optimum
PRETRAIN_FORMAT = 2  # 2: each pretrained mixture in the run store RUN_DIR/pretrain/runs/, shared by stages


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

    def token_counts(self) -> np.ndarray:
        """Training tokens per domain, in ``domains`` order."""
        return np.array([self.train_tokens[d] for d in self.domains], dtype=np.float64)

    def prior(self) -> np.ndarray:
        """Natural mixture: each domain's share of training tokens."""
        tok = self.token_counts()
        return tok / tok.sum()


def source_stats(cfg: Config) -> list[dict[str, Any]]:
    """Size and mtime of every input file, so edited data invalidates the domains stage."""
    out = []
    for src in cfg.domains.sources:
        path = getattr(src, "path", None)
        if not path:
            out.append({"hub": getattr(src, "hub", None)})
            continue
        p = Path(path)
        files = (
            sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else sorted(p.parent.glob(p.name))
        )
        out.append(
            {"path": str(p), "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
        )
    return out


def domains_stage(
    cfg: Config, run_dir: Path, executor: Callable | None = None, progress: bool = True
) -> DomainsOutput:
    """The domains stage, cached. ``executor`` runs its work units (default: in this process;
    ``moemix.ray_jobs.data.ray_data_executor`` on Ray). A killed attempt resumes unit by unit."""
    from moemix.domains.stage import run_domains

    stage = stage_for(
        run_dir,
        "domains",
        {"domains": cfg.domains, "seed": cfg.seed, "format": DOMAINS_FORMAT},
        {"sources": stable_hash(source_stats(cfg))},
    )
    if not stage.is_complete():
        log.info("domains: building %s", stage.path)
        started = time.time()
        stage.start()
        sources = None
        if not cfg.domains.sources:
            from moemix.pipeline.demo_corpus import build_demo_corpus

            cache = cfg.domains.demo_cache_dir
            sources = [build_demo_corpus(Path(cache) if cache else None, progress=progress).source_config()]
        res = run_domains(
            cfg.domains, stage.path, seed=cfg.seed, executor=executor, progress=progress, sources=sources
        )
        stage.complete({"domains": list(res.domains), "train_tokens": _train_tokens(stage.path)}, started)
    else:
        log.info("domains: cached at %s", stage.path)
    out = stage.manifest()["outputs"]
    return DomainsOutput(stage=stage, domains=list(out["domains"]), train_tokens=dict(out["train_tokens"]))


def _train_tokens(stage_path: Path) -> dict[str, int]:
    data = DomainTokens(stage_path / "tokens")
    return {d: data.n_tokens("train", d) for d in data.domains}


def check_repetition_budget(cfg: Config, domains: DomainsOutput) -> None:
    """Before the swarm: one line when the corpus is too small for the pretraining budget under
    ``propose.max_epochs``, which the propose stage would only find after every proxy had trained."""
    cap = cfg.propose.max_epochs
    if cap is None or not cfg.pretrain.enabled:
        return
    budget = cfg.pretrain.train.tokens_per_run()
    have = float(domains.token_counts().sum())
    if cap * have < budget:
        raise MoemixError(
            f"propose.max_epochs: the pretraining budget of {budget:,} tokens (pretrain.train) would "
            f"repeat the corpus's {int(have):,} training tokens {budget / have:.3g} times, more than "
            f"max_epochs {cap:g}; raise propose.max_epochs (null: no cap) or lower the budget"
        )


def check_target(cfg: Config, domains: DomainsOutput) -> None:
    """Before the swarm: a target that names a domain the domains stage did not make is one line now,
    not a failed fit after every proxy has trained (the target is applied at fit time)."""
    target_expression(cfg, domains.domains)


# ---------------------------------------------------------------- proxies
@dataclass(frozen=True)
class ProxiesOutput:
    stage: Stage
    runs_path: Path
    n_ok: int
    n_failed: int
    scale_transfer: dict[str, Any] | None
    rounds_run: int | None = None  # rounds the swarm trained (None: a stage from before rounds were recorded)


def proxy_store(stage: Stage) -> Path:
    """Where a run directory keeps its proxy runs: ``RUN_DIR/proxies/runs/<run_id>/``, shared by every
    swarm of the run directory. A run id hashes everything the proxy computes, so a swarm grown from 8
    to 12 mixtures, or re-keyed by a setting that does not change what proxies compute, trains only the
    proxies no swarm has finished."""
    return stage.path.parent


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
        domain_tokens=domains.token_counts(),
        tokens_per_run=tokens_per_run,
    )
    return make_specs(
        pcfg,
        domains.domains,
        mixtures,
        domains.tokens_dir,
        proxy_store(stage),
        domains_fingerprint=domains.fingerprint,
    )


def proxies_key_config(cfg: Config) -> dict[str, Any]:
    """What the proxies stage's key hashes: only what the proxies compute. A weighted-domain target is
    applied at fit time (unless later rounds search around the target's optimum); resources, retries,
    threads and logging cadence are execution-only. The proxies themselves are reused across keys
    (``proxy_store``).

    Later rounds are sampled around what a fit of the earlier ones predicts at the pretraining scale,
    and the proposer's optimum (half of each batch is drawn around it); ``auto`` trains one only when
    the propose stage would leave the baselines. With rounds, which mixtures the swarm holds depends on
    the fit, the pretraining budget and model (how far the fit extrapolates, the epoch caps) and the
    proposer, so those key it too. A swarm grown under one budget is not reused as if a fresh run under
    another would have trained it.
    """
    from moemix.proxies.run import swarm_target

    swarm_cfg = cfg.proxies
    if cfg.proxies.rounds == 1:
        swarm_cfg = dataclasses.replace(cfg.proxies, target=swarm_target(cfg.proxies.target))
    key: dict[str, Any] = {"proxies": outcome_view(swarm_cfg), "seed": cfg.seed, "format": SWARM_FORMAT}
    if cfg.proxies.rounds != 1:
        pre = cfg.pretrain
        key["rounds_from"] = {
            "batch": NEXT_BATCH_FORMAT,
            "fit": outcome_view(cfg.fit),
            "pretrain": {
                "enabled": pre.enabled,
                "tokens": pre.train.tokens_per_run() if pre.enabled else None,
                "model": outcome_view(pre.model) if pre.enabled else None,
            },
            "propose": outcome_view(cfg.propose),
        }
    return key


def proxies_stage(
    cfg: Config, run_dir: Path, domains: DomainsOutput, swarm_runner: Callable[[list[Any]], Any]
) -> ProxiesOutput:
    from moemix.proxies.run import scale_transfer_report

    stage = stage_for(run_dir, "proxies", proxies_key_config(cfg), {"domains": domains.stage.key})
    if not stage.is_complete():
        started = time.time()
        stage.start()  # never fresh: finished proxies under runs/ are kept and skipped
        specs = proxy_specs(cfg, domains, stage)
        log.info("proxies: %d runs under %s", len(specs), proxy_store(stage))
        planned = [s.run_id for s in specs]
        _write_swarm_plan(stage, planned, cfg.proxies.rounds)
        swarm_runner(specs)
        earlier = [s.run_id for s in specs if s.scale == "base"]
        rounds_run, auto_why = 1, None
        auto = cfg.proxies.rounds == "auto"
        for round_idx in range(1, cfg.proxies.max_rounds):
            so_far = _collected_swarm(stage, planned)  # a swarm that left nothing to fit stops here
            wanted = True
            try:
                fitted = round_fit(cfg, domains, stage, round_idx, so_far)
                proposal = round_proposal(cfg, domains, fitted)
                if auto:
                    wanted, auto_why = another_round_wanted(proposal.decision, round_idx)
            except MoemixError as e:
                if not auto:
                    raise
                # the fit and propose stages meet the same problem and report it; the proxies are done
                nth, fit = _round_name(round_idx + 1), _fit_of(round_idx)
                wanted, auto_why = False, f"no {nth}: {fit} failed ({e})"
            if auto:
                log.info("proxies: rounds auto: %s", auto_why)
            if not wanted:
                break
            more = next_round_specs(
                cfg,
                domains,
                fitted,
                round_idx,
                earlier,
                proxy_store(stage),
                anchor=proposal_optimum(proposal),
            )
            log.info(
                "proxies: round %d, %d runs: half around the proposer's optimum, half around the best "
                "predicted mixtures",
                round_idx + 1,
                len(more),
            )
            planned += [s.run_id for s in more]
            rounds_run = round_idx + 1
            _write_swarm_plan(stage, planned, cfg.proxies.rounds)
            swarm_runner(more)
            earlier += [s.run_id for s in more]
        _write_swarm_plan(stage, planned, rounds_run)
        runs = _collected_swarm(stage, planned)
        n_ok = int((runs["status"] == "ok").sum())
        stage.complete(
            {
                "runs": "runs.parquet",
                "n_ok": n_ok,
                "n_failed": int((runs["status"] != "ok").sum()),
                "scale_transfer": scale_transfer_report(runs),
                "rounds": {"run": rounds_run, "auto": auto_why},
            },
            started,
        )
    out = stage.manifest()["outputs"]
    return ProxiesOutput(
        stage,
        stage.path / out["runs"],
        out["n_ok"],
        out["n_failed"],
        out.get("scale_transfer"),
        (out.get("rounds") or {}).get("run"),
    )


SWARM_PLAN = "swarm.json"


def _collected_swarm(stage: Stage, run_ids: list[str]) -> pd.DataFrame:
    """The runs table of ``run_ids`` (written into the stage), or one clear error when none succeeded."""
    from moemix.proxies.run import collect_runs

    runs = collect_runs(stage.path, run_ids=run_ids, store=proxy_store(stage))
    if runs.empty:
        raise MoemixError(f"proxies: the swarm left no result.json under {stage.path / 'runs'}")
    if not (runs["status"] == "ok").any():
        raise MoemixError(f"proxies: all {len(runs)} proxy runs failed; first error: {runs['error'].iloc[0]}")
    return runs


def _write_swarm_plan(stage: Stage, run_ids: list[str], rounds: int | str) -> None:
    """The run ids this swarm will train so far (later rounds add theirs): what ``moemix status``
    counts finished proxies against while the stage runs."""
    write_json_atomic(stage.path / SWARM_PLAN, {"run_ids": run_ids, "rounds": rounds})


def _pretrain_tokens(cfg: Config) -> int | None:
    """The pretraining budget the proposer caps repetition at (None when nothing is pretrained)."""
    return cfg.pretrain.train.tokens_per_run() if cfg.pretrain.enabled else None


def round_fit(cfg: Config, domains: DomainsOutput, stage: Stage, round_idx: int, runs: pd.DataFrame) -> Any:
    """The fit a round's batch is sampled from: the fit stage's own fit of every run so far (``runs``,
    as ``_collected_swarm`` wrote them into the stage), kept under ``rounds/<i>/``. When no later round
    follows, it is the fit stage's fit, which then copies it instead of fitting again."""
    from moemix.proxies.run import CURVES_TABLE

    curves = pd.read_parquet(stage.path / CURVES_TABLE)
    out_dir = stage.path / "rounds" / str(round_idx)
    return fit_swarm(cfg, domains, runs, curves, out_dir, where=str(stage.path))


# what a fit was computed from (``fit_inputs_key``), written beside it so an identical fit can be reused
FIT_INPUTS = "fit_inputs.json"


def fit_inputs_key(
    fit_cfg: Any, target: str, runs: pd.DataFrame, curves: pd.DataFrame | None, domains: Any
) -> str:
    """A digest of everything ``fit_swarm`` passes to the fit: the fit config, the target, both tables'
    contents and the domains' prior and token counts (the seed noise and the size check derive from
    these). Equal keys mean the same fit: the fit is deterministic in its inputs and ``fit.seed``."""

    def table(df: pd.DataFrame | None) -> Any:
        if df is None:
            return None
        digest = pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()
        return [list(map(str, df.columns)), stable_hash(digest.hex(), length=32)]

    return stable_hash(
        {
            "fit": asdict(fit_cfg),
            "target": target,
            "runs": table(runs),
            "curves": table(curves),
            "prior": np.asarray(domains.prior(), dtype=np.float64).tolist(),
            "tokens": [int(t) for t in domains.token_counts()],
            "format": _fit_format(),
        },
        length=32,
    )


def _fit_format() -> int:
    from moemix.mixing.fit import FIT_FORMAT

    return FIT_FORMAT


def _reusable_fit(candidate: Path | None, key: str) -> bool:
    if candidate is None or not (candidate / "fit.json").exists():
        return False
    try:
        return json.loads((candidate / FIT_INPUTS).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def fit_swarm(
    cfg: Config,
    domains: DomainsOutput,
    runs: pd.DataFrame,
    curves: pd.DataFrame | None,
    out_dir: Path,
    where: str,
    reuse: Path | None = None,
) -> Any:
    """The configured predictor fitted to a swarm's base runs, with the seed noise of its replicated
    uniform mixture and the scale check's model-size term: what the fit stage and every round fit.
    ``reuse``: a fit directory that, when it was fitted from the very same inputs, is copied instead."""
    from moemix.mixing.fit import fit_runs, load_fit, seed_noise

    fit_cfg = fit_config(cfg, domains)
    target = target_expression(cfg, domains.domains)
    key = fit_inputs_key(fit_cfg, target, runs, curves, domains)
    if _reusable_fit(reuse, key):
        shutil.copytree(reuse, out_dir, dirs_exist_ok=True)
        log.info("fit: the same runs were fitted for the last round's decision; reusing %s", reuse)
        return load_fit(out_dir)
    base = runs[runs["scale"] == "base"] if "scale" in runs else runs
    result = fit_runs(
        base,
        target=target,
        weight_cols=[f"w/{d}" for d in domains.domains],
        cfg=fit_cfg,
        out_dir=out_dir,
        prior=domains.prior(),
        domain_tokens=domains.token_counts(),
        where=where,
        curves=curves,
        seed_noise=seed_noise(_replicate_targets(base, target)),
        size_check=_size_check(runs, curves),
    )
    write_json_atomic(Path(out_dir) / FIT_INPUTS, {"key": key})
    return result


def _round_name(n: int) -> str:
    return {2: "second round", 3: "third round", 4: "fourth round"}.get(n, f"round {n}")


def _fit_of(rounds_so_far: int) -> str:
    return "a fit of the first swarm" if rounds_so_far == 1 else f"a fit of the first {rounds_so_far} rounds"


def round_proposal(cfg: Config, domains: DomainsOutput, fitted: Any) -> Any:
    """What the propose stage would make of ``fitted``, a fit of the rounds so far: the same proposer,
    prior, token counts and pretraining budget."""
    from moemix.mixing.propose import propose

    return propose(
        fitted,
        domains.prior(),
        cfg.propose,
        domain_tokens=domains.token_counts(),
        target_tokens=_pretrain_tokens(cfg),
    )


def proposal_optimum(proposal: Any) -> np.ndarray:
    """The proposer's optimum before the do-no-harm share: the mixture a stronger fit would ship, so the
    one the next batch should check."""
    d = proposal.decision
    if d is not None and d.optimum:
        return np.array([d.optimum[name] for name in proposal.domains], dtype=np.float64)
    return np.asarray(proposal.weights, dtype=np.float64)


def another_round_wanted(decision: Any, rounds_so_far: int = 1) -> tuple[bool, str]:
    """``rounds: auto``: is another batch worth training, and why? Only when the propose stage's
    ``decision`` for a fit of every run of the ``rounds_so_far`` rounds trained would move the mixture
    away from uniform and natural. Its optimum then lies where the swarm has few runs (often held at the
    trust region's edge); when the do-no-harm guard would ship a baseline, the swarm already samples
    densely around it."""
    d = decision
    figures = ", ".join(
        f"{name} {v:.4f}"
        for name, v in (("predicted gain", d.predicted_gain), ("noise", d.noise))
        if v is not None
    )
    nth, fit = _round_name(rounds_so_far + 1), _fit_of(rounds_so_far)
    if d.action == "baseline":
        return False, f"no {nth}: {fit} would ship {d.baseline} ({figures})"
    return True, f"a {nth}: {fit} would move away from {d.baseline} ({d.action}, {figures})"


def next_round_specs(
    cfg: Config,
    domains: DomainsOutput,
    fitted: Any,
    round_idx: int,
    earlier: list[str],
    store: Path,
    anchor: np.ndarray | None = None,
) -> list[Any]:
    """CLIMB: the next batch, sampled around the best mixtures ``fitted`` (a fit of the base runs of the
    earlier rounds, ``earlier``: their run ids) predicts, half of it around ``anchor`` (the proposer's
    optimum, ``proposal_optimum``) when given.

    Deterministic given those runs, so a resumed stage asks for the same batch again and the finished
    part of it is skipped.
    """
    from moemix.mixing.propose import ProposeConfig, propose_next_batch
    from moemix.proxies.run import round_specs

    pcfg = cfg.proxies
    mixtures = propose_next_batch(
        fitted,
        None,
        pcfg.next_round_size,
        round_idx,
        cfg=ProposeConfig(n_samples=20_000, max_epochs=pcfg.sampler.max_epochs, seed=cfg.seed),
        existing=np.asarray(fitted.observed_weights, dtype=np.float64),
        domain_tokens=domains.token_counts(),
        tokens_per_run=pcfg.train.tokens_per_run(),
        anchor=anchor,
    )
    return round_specs(
        pcfg,
        mixtures,
        domains.tokens_dir,
        store,
        start_index=len(earlier),
        domains_fingerprint=domains.fingerprint,
    )


def fit_config(cfg: Config, domains: DomainsOutput) -> Any:
    """``cfg.fit`` with what the pipeline knows added: for ``scaling_law``, how far to extrapolate."""
    fit_cfg = cfg.fit
    if fit_cfg.predictor == "scaling_law":
        vocab = DomainTokens(domains.tokens_dir).vocab_size
        params = {
            "target_scale": target_scale(cfg),
            "target_params": target_params_ratio(cfg, vocab),
            **fit_cfg.predictor_params,
        }
        fit_cfg = dataclasses.replace(fit_cfg, predictor_params=params)
    return fit_cfg


def target_expression(cfg: Config, domains: list[str]) -> str:
    """The configured target as a runs-table expression: weighted ``loss/<domain>`` columns, or the
    proxies' own ``target`` column for an external set."""
    from moemix.training.evaluate import target_weights

    if cfg.proxies.target.external:
        return "target"
    try:
        weights = target_weights(cfg.proxies.target, domains)
    except MoemixError as e:
        raise MoemixError(f"proxies.target: {e}") from None
    return ",".join(f"loss/{d}:{w!r}" for d, w in weights.items())


def target_scale(cfg: Config) -> float:
    """Pretraining tokens over one proxy's: how far the fit extrapolates (1 when nothing is pretrained)."""
    if not cfg.pretrain.enabled:
        return 1.0
    return cfg.pretrain.train.tokens_per_run() / cfg.proxies.train.tokens_per_run()


# ---------------------------------------------------------------- fit
@dataclass(frozen=True)
class FitOutput:
    stage: Stage


def fit_stage(cfg: Config, run_dir: Path, domains: DomainsOutput, proxies: ProxiesOutput) -> FitOutput:
    from moemix.mixing.fit import FIT_FORMAT
    from moemix.proxies.run import CURVES_TABLE

    fit_cfg = fit_config(cfg, domains)
    target = target_expression(cfg, domains.domains)
    stage = stage_for(
        run_dir,
        "fit",
        {"fit": fit_cfg, "target": target, "seed": cfg.seed, "format": FIT_FORMAT},
        {"proxies": proxies.stage.key},
    )
    if not stage.is_complete():
        started = time.time()
        stage.start(fresh=True)
        curves_path = proxies.stage.path / CURVES_TABLE
        # under rounds the last round's decision may have fitted these very runs already
        last_round = proxies.stage.path / "rounds" / str(proxies.rounds_run) if proxies.rounds_run else None
        result = fit_swarm(
            cfg,
            domains,
            pd.read_parquet(proxies.runs_path),
            pd.read_parquet(curves_path) if curves_path.exists() else None,
            stage.path,
            where=str(proxies.runs_path),
            reuse=last_round,
        )
        stage.complete(
            {"predictor": result.cv.get("predictor"), "cv_spearman": result.cv.get("spearman")}, started
        )
    return FitOutput(stage)


def target_params_ratio(cfg: Config, vocab_size: int) -> float | None:
    """Active parameters of the pretrain model over the proxy's, both at the trained tokenizer's vocab
    (None when nothing is pretrained)."""
    if not cfg.pretrain.enabled:
        return None
    return _active_params(cfg.pretrain.model, vocab_size) / _active_params(cfg.proxies.model, vocab_size)


def _active_params(model_cfg: Any, vocab_size: int) -> int:
    import torch

    from moemix.moe_model import MoETransformer

    with torch.device("meta"):  # counts only: a cluster-size model allocates nothing
        model = MoETransformer(dataclasses.replace(model_cfg, vocab_size=vocab_size))
        return int(model.num_params(active_only=True))


def _size_check(runs: pd.DataFrame, curves: pd.DataFrame | None) -> Any:
    """The scale check's curves and active-parameter ratio, for the fit's model-size extrapolation."""
    from moemix.mixing.fit import SizeCheck

    if curves is None or "scale" not in runs or not (runs["scale"] == "large").any():
        return None
    ok = runs[runs["status"] == "ok"]
    base, large = ok[ok["scale"] == "base"], ok[ok["scale"] == "large"]
    if large.empty or base.empty:
        return None
    ratio = float(large["params_active"].median()) / float(base["params_active"].median())
    return SizeCheck(curves=curves[curves["run_id"].isin(large["run_id"])], params_ratio=ratio)


def _replicate_targets(runs: pd.DataFrame, target: str) -> np.ndarray:
    """Target of every successful run of the swarm's first mixture (uniform, under several seeds)."""
    from moemix.mixing.runs import parse_target

    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return np.zeros(0)
    wcols = [c for c in runs.columns if c.startswith("w/")]
    first = runs[wcols].to_numpy(dtype=np.float64)[0]
    same = np.all(np.abs(ok[wcols].to_numpy(dtype=np.float64) - first) < 1e-9, axis=1)
    spec = parse_target(target, [str(c) for c in runs.columns])
    return ok[same][spec.columns].to_numpy(dtype=np.float64) @ np.asarray(spec.coefs)


# ---------------------------------------------------------------- propose
@dataclass(frozen=True)
class ProposeOutput:
    stage: Stage

    @property
    def mixture_path(self) -> Path:
        return self.stage.path / "mixture.json"


def propose_stage(
    cfg: Config, run_dir: Path, domains: DomainsOutput, proxies: ProxiesOutput, fit: FitOutput
) -> ProposeOutput:
    from moemix.mixing.fit import load_fit
    from moemix.mixing.propose import PROPOSE_FORMAT, proposal_to_doc, propose
    from moemix.mixing.report import plot_mixture
    from moemix.mixing.schema import write_mixture

    stage = stage_for(
        run_dir,
        "propose",
        {"propose": cfg.propose, "seed": cfg.seed, "format": PROPOSE_FORMAT},
        {"fit": fit.stage.key, "domains": domains.stage.key},
    )
    if not stage.is_complete():
        started = time.time()
        stage.start(fresh=True)
        fitted = load_fit(fit.stage.path)
        domain_tokens, prior = domains.token_counts(), domains.prior()
        proposal = propose(
            fitted, prior, cfg.propose, domain_tokens=domain_tokens, target_tokens=_pretrain_tokens(cfg)
        )
        plots = {}
        if cfg.fit.plots:
            plot_mixture(list(proposal.domains), proposal.weights, prior, stage.path / "mixture.png")
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
            rounds_run=proxies.rounds_run,
        )
        write_mixture(stage.path / "mixture.json", doc)
        stage.complete({"mixture": "mixture.json"}, started)
    return ProposeOutput(stage)


def scale_transfer_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The swarm's base-vs-large rank agreement as mixture.json reports it, with a warning when low."""
    if not report:
        return None
    summary = transfer_summary(report["target"]["spearman"], int(report["target"]["n"]))
    if summary["warning"]:
        log.warning("scale check: %s", summary["warning"])
    return summary


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
class MixtureSource:
    """The mixture pretraining trains on: the propose stage's, or a file the user gives."""

    path: Path  # a mixture.json
    inputs: dict[str, str]  # what the pretrain key records as its origin
    weights: dict[str, float]


def proposed_mixture(propose_out: ProposeOutput) -> MixtureSource:
    from moemix.mixing.schema import load_mixture

    doc = load_mixture(propose_out.mixture_path)
    return MixtureSource(propose_out.mixture_path, {"propose": propose_out.stage.key}, doc.weights)


def given_mixture(path: str | Path, domains: DomainsOutput) -> MixtureSource:
    """``moemix pretrain --mixture FILE``: a mixture.json from any run (validated against the schema) or
    a hand-written ``{"domain": weight, ...}`` mapping; its domains must be the domains stage's."""
    from moemix._io import file_hash
    from moemix.mixing.runs import rounding_slack
    from moemix.mixing.schema import load_mixture

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MoemixError(f"{path}: mixture file not found") from None
    except (OSError, ValueError) as e:
        raise MoemixError(f"{path}: not a readable JSON mixture ({e})") from None
    if isinstance(obj, dict) and "schema_version" in obj:
        weights = load_mixture(path).weights
    elif isinstance(obj, dict) and obj and all(isinstance(v, (int, float)) for v in obj.values()):
        weights = {str(k): float(v) for k, v in obj.items()}
        bad = [d for d, w in weights.items() if not (np.isfinite(w) and w >= 0)]
        if bad:
            raise MoemixError(f"{path}: weight of {bad[0]!r} must be a finite number >= 0")
        total = sum(weights.values())
        slack = float(rounding_slack(np.array([list(weights.values())]))[0])
        if abs(total - 1.0) > max(1e-3, slack):
            raise MoemixError(f"{path}: weights sum to {total:.6g}, not 1")
        weights = {d: w / total for d, w in weights.items()}
    else:
        raise MoemixError(
            f"{path}: expected a mixture.json (moemix.load_mixture) or a mapping of domain to weight"
        )
    missing = [d for d in domains.domains if d not in weights]
    extra = [d for d in weights if d not in domains.domains]
    if missing or extra:
        what = f"no weight for domain {missing[0]!r}" if missing else f"unknown domain {extra[0]!r}"
        raise MoemixError(f"{path}: {what} (the domains stage has {', '.join(domains.domains)})")
    return MixtureSource(path.resolve(), {"mixture": file_hash(path)}, weights)


@dataclass(frozen=True)
class PretrainOutput:
    stage: Stage
    comparison: dict[str, Any]


def pretrain_key_config(cfg: Config) -> dict[str, Any]:
    """What the pretrain stage's key hashes: the section without its execution-only fields (threads per
    worker, checkpoint cadence, the declared device memory, ...). The worker count and layout stay in:
    a Switch aux loss per forward depends on them."""
    return {
        "pretrain": outcome_view(cfg.pretrain),
        "target": cfg.proxies.target,
        "seed": cfg.seed,
        "format": PRETRAIN_FORMAT,
    }


def pretrain_stage(
    cfg: Config,
    run_dir: Path,
    domains: DomainsOutput,
    source: MixtureSource | ProposeOutput,
    pretrain_runner: Callable[[dict[str, dict[str, float]], Path, Path], dict[str, dict[str, Any]]],
) -> PretrainOutput:
    """Pretrain on the chosen mixture and, with the same tokens, on the uniform and natural ones.

    ``source``: the propose stage's output or a ``given_mixture``. ``pretrain_runner(mixtures,
    tokens_dir, run_dirs) -> {name: result dict}`` trains each named mixture in ``run_dirs[name]``
    (resuming from its checkpoint; a finished one is read back) and returns its final validation
    losses. A baseline equal to the chosen mixture (the do-no-harm guard can ship one) is not trained
    twice.

    Every run lives in the store ``RUN_DIR/pretrain/runs/<key>/``, keyed by what decides what it learns
    (``pretrain_run_key``), not by the stage: uniform and natural do not depend on the chosen mixture, so
    a new target or a hand-written mixture pretrains only the new mixture, and its baselines are the
    runs the last comparison trained. The stage's ``runs.json`` names each mixture's run directory.
    """
    from moemix.report.collect import PRETRAIN_RUN_DIRS

    if isinstance(source, ProposeOutput):
        source = proposed_mixture(source)
    stage = stage_for(
        run_dir, "pretrain", pretrain_key_config(cfg), {**source.inputs, "domains": domains.stage.key}
    )
    if not stage.is_complete():
        started = time.time()
        stage.start()  # never fresh (the runs are outside it, but its runs.json names them)
        wanted = {"chosen": source.weights}
        if cfg.pretrain.compare_uniform:
            wanted["uniform"] = {d: 1.0 / len(domains.domains) for d in domains.domains}
        if cfg.pretrain.compare_natural:
            wanted["natural"] = dict(zip(domains.domains, domains.prior().tolist()))
        same_as: dict[str, str] = {}
        mixtures: dict[str, dict[str, float]] = {}
        for name, mix in wanted.items():
            twin = next((n for n, m in mixtures.items() if _same_mixture(m, mix)), None)
            if twin is None:
                mixtures[name] = mix
            else:
                same_as[name] = twin
        store = pretrain_store(run_dir)
        run_dirs = {name: store / pretrain_run_key(cfg, domains, mix) for name, mix in mixtures.items()}
        # before training, so that `moemix status` and the report find the runs while they train
        write_json_atomic(
            stage.path / PRETRAIN_RUN_DIRS,
            {name: os.path.relpath(path, stage.path) for name, path in run_dirs.items()},
        )
        results = pretrain_runner(mixtures, domains.tokens_dir, run_dirs)
        results = {name: on_target(r, cfg.proxies.target, domains.domains) for name, r in results.items()}
        results.update({name: results[twin] for name, twin in same_as.items()})
        comparison: dict[str, Any] = {
            name: {
                "target_loss": r["target_loss"],
                "target_bpb": r.get("target_bpb"),
                "tokens": r.get("tokens"),
                "checkpoint": r.get("checkpoint"),
                "loss": r.get("loss"),
                "same_as": same_as.get(name),
                "run_dir": str(run_dirs[same_as.get(name, name)]),
            }
            for name, r in results.items()
        }
        if "uniform" in comparison:
            comparison["improvement_vs_uniform"] = (
                comparison["uniform"]["target_loss"] - comparison["chosen"]["target_loss"]
            )
        comparison["verdict"] = asdict(pretrain_verdict(comparison))
        comparison["moemix_version"] = __version__
        write_json_atomic(stage.path / "comparison.json", comparison)
        stage.complete({"comparison": comparison}, started)
    return PretrainOutput(stage, stage.manifest()["outputs"]["comparison"])


def pretrain_store(run_dir: Path) -> Path:
    """Where every pretrain run of a run dir lives, whichever stage asked for it."""
    return Path(run_dir) / "pretrain" / "runs"


def pretrain_run_key(cfg: Config, domains: DomainsOutput, mixture: dict[str, float]) -> str:
    """A pretrain run's identity: the pretrain section's outcome fields, the seed, the tokens and the
    mixture (rounded to 9 decimals, as mixture.json writes it). A weighted-domain target is left out
    (the run records every domain's loss and ``on_target`` applies the target), so a retargeted run
    reuses its baselines; an external target set is evaluated in the run, so it stays in."""
    from moemix.proxies.run import swarm_target

    return stable_hash(
        {
            "pretrain": outcome_view(cfg.pretrain),
            "target": swarm_target(cfg.proxies.target),
            "seed": cfg.seed,
            "format": PRETRAIN_FORMAT,
            "domains": domains.stage.key,
            "mixture": {d: round(float(w), 9) for d, w in sorted(mixture.items())},
        }
    )


def on_target(result: dict[str, Any], target: Any, domains: list[str]) -> dict[str, Any]:
    """A pretrain run's result with its target loss (and bpb) under ``target``: a weighted-domain target
    is a weighted sum of the per-domain losses the run recorded, whatever target it was trained under."""
    from moemix.training.evaluate import weighted_target

    if target.external:
        return result
    return {
        **result,
        "target_loss": float(weighted_target(result["loss"], target, domains)),
        "target_bpb": float(weighted_target(result.get("bpb") or {}, target, domains, strict=False)),
    }


def _same_mixture(a: dict[str, float], b: dict[str, float]) -> bool:
    return set(a) == set(b) and all(abs(a[d] - b[d]) < 1e-9 for d in a)


BASELINES = ("uniform", "natural")


def pretrain_verdict(comparison: dict[str, Any]) -> PretrainCheck:
    """Did the chosen mixture beat every baseline it was pretrained next to?"""
    losses = {n: float(comparison[n]["target_loss"]) for n in ("chosen", *BASELINES) if n in comparison}
    chosen = losses["chosen"]
    base = {n: v for n, v in losses.items() if n != "chosen"}
    if not base:
        return PretrainCheck(losses, True, f"chosen {chosen:.4f} (no baseline pretrained)")
    same = [n for n in base if comparison[n].get("same_as") == "chosen"]
    others = {n: v for n, v in base.items() if n not in same}
    lost = [n for n, v in others.items() if v <= chosen]
    # a baseline the guard shipped is the chosen mixture itself: nothing to beat, and say so
    head = f"chosen {chosen:.4f}" + "".join(f" is the {n} mixture," for n in same)
    vs = ", ".join(f"{n} {v:.4f}" for n, v in others.items())
    if not lost:
        return PretrainCheck(losses, True, f"{head} beats {vs}" if vs else head.rstrip(","))
    return PretrainCheck(losses, False, f"WARNING: {head} does not beat {', '.join(lost)} ({vs})")


def _with_gains(check: PretrainCheck, comparison: dict[str, Any], doc: Any) -> PretrainCheck:
    """``check`` with the chosen mixture's gain over each baseline, predicted (``doc``'s fit) and
    measured, in its fields and at the end of its verdict."""
    losses = check.target_loss
    predicted = {"chosen": doc.predicted_target_loss, **asdict(doc.baselines)}
    gains: dict[str, dict[str, float | None]] = {}
    for name in BASELINES:
        if name not in losses or losses[name] is None or comparison[name].get("same_as") == "chosen":
            continue
        guess = (
            None
            if predicted.get(name) is None or predicted["chosen"] is None
            else float(predicted[name]) - float(predicted["chosen"])
        )
        gains[name] = {"predicted": guess, "measured": float(losses[name]) - float(losses["chosen"])}
    if not gains:
        return dataclasses.replace(check, gains=None)
    said = "; ".join(
        f"gain over {n}: predicted {_signed(g['predicted'])}, measured {_signed(g['measured'])}"
        for n, g in gains.items()
    )
    verdict = check.verdict.split("; gain over ")[0]  # a re-annotated verdict keeps one account
    return dataclasses.replace(check, gains=gains, verdict=f"{verdict}; {said}")


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def annotate_mixture(mixture_path: Path, comparison: dict[str, Any]) -> PretrainCheck:
    """Record the pretraining verdict in the published mixture.json (what users read), and warn on a loss."""
    from moemix.mixing.schema import load_mixture, write_mixture

    check = (
        PretrainCheck(**comparison["verdict"]) if "verdict" in comparison else pretrain_verdict(comparison)
    )
    doc = load_mixture(mixture_path)
    check = _with_gains(check, comparison, doc)
    notes = [n for n in (doc.notes or []) if not n.startswith("pretraining: ")]
    if not check.beats_baselines:
        log.warning("pretraining: %s", check.verdict)
        notes.append(f"pretraining: {check.verdict}")
    write_mixture(mixture_path, dataclasses.replace(doc, pretrain_check=check, notes=notes or None))
    return check
