"""One proxy run end to end (train, evaluate, write result.json) and the runs table.

Pure Python, no Ray: ``moemix.ray_jobs.swarm`` fans ``run_proxy`` out over a cluster, and
``run_sequential`` runs the same specs in-process (debugging, Ray-overhead benchmark).

Resumability: ``out_dir/runs/<run_id>/result.json`` is written atomically *after* a run finishes,
so its presence with ``status: ok`` means the run is complete and is never trained again; a crash
leaves no file and the run is simply redone. ``run_id`` hashes everything that changes a run's
outcome (mixture, model, training and target config, the tokenized domains) and nothing that
does not (threads, device, logging cadence).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moemix._io import atomic_path, stable_hash, write_json_atomic
from moemix.errors import MoemixError
from moemix.mixing.transfer import has_large_runs, scale_agreement
from moemix.token_shards import DomainTokens
from moemix.training.config import TrainConfig, outcome_config
from moemix.training.evaluate import EvalResult, TargetConfig, evaluate
from moemix.training.loop import train
from moemix.training.stream import normalize_mixture
from moemix.training.tensorboard import ScalarWriter

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"
RUNS_TABLE = "runs.parquet"
CURVES_TABLE = "curves.parquet"


@dataclass
class ProxySpec:
    run_id: str
    mixture: dict[str, float]
    model: Any  # moemix.moe_model.MoEConfig
    train: TrainConfig
    target: TargetConfig
    tokens_dir: str
    out_dir: str
    scale: str = "base"  # base | large (scale check)
    index: int = 0  # position in the swarm (row order of the runs table)
    # evaluations of every domain along training (the last one at the end); > 1 gives the loss
    # curves that the scaling-law fit extrapolates to the pretraining budget
    curve_points: int = 1
    # Test hooks, not part of run_id: raise in the first N attempts / kill the worker process in
    # the first N process-level attempts (counted in a file, so only meaningful under Ray).
    inject_errors: int = 0
    inject_crashes: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / "runs" / self.run_id

    @property
    def result_path(self) -> Path:
        return self.run_dir / RESULT_NAME


@dataclass
class ProxyResult:
    run_id: str
    status: str  # ok | failed
    error: str = ""
    scale: str = "base"
    index: int = 0
    mixture: dict[str, float] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)
    bpb: dict[str, float] = field(default_factory=dict)
    target: float = float("nan")
    target_bpb: float = float("nan")
    tokens: int = 0
    seconds: float = 0.0  # wall time of the whole run (train + eval)
    train_seconds: float = 0.0
    params_active: int = 0
    params_total: int = 0
    flops_per_token: float = 0.0
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    train_loss: float = float("nan")
    epochs: dict[str, float] = field(default_factory=dict)
    # per-domain validation loss at several points of training: [{"step", "tokens", "loss": {d: nats}}]
    curve: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    attempts: int = 0
    finished_at: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProxyResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def _tokens_hash(data: DomainTokens) -> str:
    """Hash of the tokenized domains' meta (names, vocab, counts); content is covered by the stage hash."""
    return stable_hash(asdict(data.meta))


def make_run_id(
    mixture: Mapping[str, float],
    model: Any,
    train_cfg: TrainConfig,
    target: TargetConfig,
    fingerprint: str,
    scale: str = "base",
    curve_points: int = 1,
) -> str:
    tc = outcome_config(train_cfg)
    mix = {d: round(float(w), 12) for d, w in mixture.items()}
    key: dict[str, Any] = {
        "mixture": mix,
        "model": model,
        "train": tc,
        "target": target,
        "domains": fingerprint,
        "scale": scale,
    }
    if curve_points > 1:  # keeps the ids of runs without curves as they were
        key["curve_points"] = curve_points
    return stable_hash(key)


def swarm_target(target: TargetConfig) -> TargetConfig:
    """The part of the target a proxy must evaluate itself: only an external set. A weighted-domain
    target is a sum of per-domain losses that every run records anyway, so it is applied at fit time
    and changing it retrains nothing."""
    return TargetConfig(external=target.external) if target.external else TargetConfig()


def model_config_for_data(model: Any, vocab_size: int, seq_len: int) -> Any:
    """The proxy's embedding is sized to the tokenizer actually trained (BPE may stop short of
    the configured vocab) and its context to the training sequence length."""
    changes: dict[str, Any] = {}
    if dataclasses.is_dataclass(model):
        if getattr(model, "vocab_size", vocab_size) != vocab_size:
            changes["vocab_size"] = vocab_size
        if getattr(model, "max_seq_len", seq_len) < seq_len:
            changes["max_seq_len"] = seq_len
    return dataclasses.replace(model, **changes) if changes else model


def specs_for_mixtures(
    mixtures: np.ndarray | Sequence[Mapping[str, float]],
    *,
    model: Any,
    train_cfg: TrainConfig,
    target: TargetConfig,
    tokens_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    scale: str = "base",
    data: DomainTokens | None = None,
    domains_fingerprint: str | None = None,
    curve_points: int = 1,
    start_index: int = 0,
) -> list[ProxySpec]:
    """One spec per mixture (rows of an [n, D] array in ``data.domains`` order, or dicts)."""
    data = data or DomainTokens(tokens_dir)
    fp = domains_fingerprint or _tokens_hash(data)
    model = model_config_for_data(model, data.vocab_size, train_cfg.seq_len)
    specs = []
    for i, row in enumerate(mixtures):
        if isinstance(row, Mapping):
            w = normalize_mixture(row, data.domains)
        else:
            row = np.asarray(row, dtype=np.float64)
            if row.shape != (len(data.domains),):
                raise MoemixError(f"mixture row {i} has {row.size} weights for {len(data.domains)} domains")
            w = normalize_mixture(dict(zip(data.domains, row)), data.domains)
        mix = {d: float(x) for d, x in zip(data.domains, w)}
        specs.append(
            ProxySpec(
                run_id=make_run_id(mix, model, train_cfg, target, fp, scale, curve_points),
                mixture=mix,
                model=model,
                train=train_cfg,
                target=target,
                tokens_dir=str(tokens_dir),
                out_dir=str(out_dir),
                scale=scale,
                index=start_index + i,
                curve_points=curve_points,
            )
        )
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        log.warning("duplicate mixtures in the swarm: %d specs, %d distinct runs", len(ids), len(set(ids)))
    return specs


def make_specs(
    cfg: Any,
    domains: Sequence[str],
    mixtures: np.ndarray,
    tokens_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    domains_fingerprint: str | None = None,
) -> list[ProxySpec]:
    """The swarm of a ``ProxiesConfig``: every mixture at base scale, the uniform mixture (row 0) again
    under ``uniform_seeds - 1`` more training seeds (the swarm's own measure of seed noise), then the
    first ``scale_check.n_mixtures`` again with the larger model (``scale='large'``)."""
    data = DomainTokens(tokens_dir)
    if list(domains) != data.domains:
        raise MoemixError(
            f"{tokens_dir}: domains {data.domains} do not match the mixtures' columns {list(domains)}"
        )
    train_cfg = swarm_train_config(cfg)
    kw = dict(
        target=swarm_target(cfg.target),
        tokens_dir=tokens_dir,
        out_dir=out_dir,
        data=data,
        domains_fingerprint=domains_fingerprint,
        curve_points=cfg.curve_points,
    )
    mixtures = np.asarray(mixtures)
    specs = specs_for_mixtures(mixtures, model=cfg.model, train_cfg=train_cfg, scale="base", **kw)
    if cfg.sampler.include_references:
        for seed in range(1, cfg.uniform_seeds):
            reseeded = dataclasses.replace(train_cfg, seed=train_cfg.seed + seed)
            specs += specs_for_mixtures(
                mixtures[:1], model=cfg.model, train_cfg=reseeded, scale="base", start_index=len(specs), **kw
            )
    n_large = cfg.scale_check.n_mixtures
    if n_large:
        specs += specs_for_mixtures(
            mixtures[:n_large], model=cfg.scale_check.model, train_cfg=train_cfg, scale="large", **kw
        )
    return specs


def swarm_train_config(cfg: Any) -> TrainConfig:
    """A ``ProxiesConfig``'s training config as its proxies run it: the sampler projected the mixtures
    onto its epoch cap, so the stream enforces the same one."""
    if cfg.train.max_epochs is None and cfg.sampler.max_epochs is not None:
        return dataclasses.replace(cfg.train, max_epochs=cfg.sampler.max_epochs)
    return cfg.train


def round_specs(
    cfg: Any,
    mixtures: np.ndarray,
    tokens_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    start_index: int,
    domains_fingerprint: str | None = None,
) -> list[ProxySpec]:
    """Base-scale specs for a later round of an iterative swarm (indices continue after ``start_index``)."""
    return specs_for_mixtures(
        mixtures,
        model=cfg.model,
        train_cfg=swarm_train_config(cfg),
        target=swarm_target(cfg.target),
        tokens_dir=tokens_dir,
        out_dir=out_dir,
        domains_fingerprint=domains_fingerprint,
        curve_points=cfg.curve_points,
        start_index=start_index,
    )


def load_result(spec_or_path: ProxySpec | str | os.PathLike[str]) -> ProxyResult | None:
    path = spec_or_path.result_path if isinstance(spec_or_path, ProxySpec) else Path(spec_or_path)
    if not path.exists():
        return None
    try:
        return ProxyResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:  # cannot happen with atomic writes; be safe anyway
        log.warning("ignoring unreadable %s: %s", path, e)
        return None


def is_complete(spec: ProxySpec) -> bool:
    res = load_result(spec)
    return res is not None and res.status == "ok"


def record_failure(spec: ProxySpec, error: str, attempts: int) -> ProxyResult:
    """Write (atomically) and return a failed result, so a broken proxy is visible in the runs table."""
    res = ProxyResult(
        run_id=spec.run_id,
        status="failed",
        error=" ".join(error.split())[:2000] or "unknown error",
        scale=spec.scale,
        index=spec.index,
        mixture=dict(spec.mixture),
        tokens=0,
        attempts=attempts,
        finished_at=time.time(),
    )
    write_json_atomic(spec.result_path, res)
    return res


def _maybe_crash(spec: ProxySpec) -> None:
    if spec.inject_crashes <= 0:
        return
    marker = spec.run_dir / ".crashes"
    marker.parent.mkdir(parents=True, exist_ok=True)
    n = int(marker.read_text()) if marker.exists() else 0
    if n < spec.inject_crashes:
        marker.write_text(str(n + 1))
        os._exit(17)  # simulate a dying worker (OOM kill, node loss)


def _scalars(spec: ProxySpec) -> ScalarWriter:
    """TensorBoard event files next to the proxy's result.json (``tensorboard --logdir
    RUN_DIR/proxies/runs``). An attempt trains from scratch, so an earlier attempt's file is removed
    first: its steps would show twice."""
    for stale in spec.run_dir.glob("events.out.tfevents.*"):
        stale.unlink()
    return ScalarWriter(spec.run_dir)


def _eval_scalars(ev: EvalResult) -> dict[str, float]:
    return {"eval/target": ev.target, **{f"eval/loss/{d}": v for d, v in ev.loss.items()}}


def _train_and_evaluate(spec: ProxySpec, attempt: int) -> ProxyResult:
    t0 = time.perf_counter()
    _maybe_crash(spec)
    if attempt < spec.inject_errors:
        raise RuntimeError(f"injected transient failure (attempt {attempt + 1})")
    with _scalars(spec) as scalars:
        return _train_and_evaluate_logged(spec, attempt, t0, scalars)


def _train_and_evaluate_logged(
    spec: ProxySpec, attempt: int, t0: float, scalars: ScalarWriter
) -> ProxyResult:
    data = DomainTokens(spec.tokens_dir)
    train_cfg = spec.train
    curve: list[dict[str, Any]] = []

    def evaluate_all(model: Any) -> EvalResult:
        return evaluate(
            model,
            data,
            spec.target,
            seq_len=train_cfg.seq_len,
            eval_tokens=train_cfg.eval_tokens,
            batch_size=train_cfg.eval_batch_size,
        )

    eval_fn = None
    if spec.curve_points > 1:
        train_cfg = dataclasses.replace(
            train_cfg, eval_every=max(1, train_cfg.num_steps // spec.curve_points)
        )
        step = [0]

        def eval_fn(model: Any) -> dict[str, Any]:
            step[0] += train_cfg.eval_every
            ev = evaluate_all(model)
            curve.append(
                {
                    "step": step[0],
                    "tokens": step[0] * train_cfg.tokens_per_step,
                    "loss": ev.loss,
                    "target": ev.target,
                }
            )
            scalars.add(step[0], _eval_scalars(ev))
            return {}

    def on_log(rec: dict[str, Any]) -> None:
        scalars.add(int(rec["step"]), {f"train/{k}": v for k, v in rec.items() if k != "step"})

    tr = train(spec.model, train_cfg, data, spec.mixture, eval_fn=eval_fn, on_log=on_log)
    ev = evaluate_all(tr.model)
    scalars.add(tr.steps, _eval_scalars(ev))
    if spec.curve_points > 1:
        curve.append({"step": tr.steps, "tokens": tr.tokens, "loss": ev.loss, "target": ev.target})
    return ProxyResult(
        run_id=spec.run_id,
        status="ok",
        scale=spec.scale,
        index=spec.index,
        mixture=dict(spec.mixture),
        loss=ev.loss,
        bpb=ev.bpb,
        target=ev.target,
        target_bpb=ev.target_bpb,
        tokens=tr.tokens,
        seconds=time.perf_counter() - t0,
        train_seconds=tr.seconds,
        params_active=tr.params_active,
        params_total=tr.params_total,
        flops_per_token=tr.flops_per_token,
        tokens_per_s=tr.tokens_per_s,
        mfu=tr.mfu,
        train_loss=tr.final_loss,
        epochs=tr.epochs,
        curve=curve,
        seed=spec.train.seed,
        attempts=attempt + 1,
        finished_at=time.time(),
    )


def run_proxy(spec: ProxySpec, *, transient_retries: int = 1) -> ProxyResult:
    """Train + evaluate one proxy; skip if already complete; retry, then record a failure.

    ``MoemixError`` (bad input: cap exceeded, unknown domain) is deterministic and is recorded
    at once; any other exception is retried up to ``transient_retries`` times.
    """
    done = load_result(spec)
    if done is not None and done.status == "ok":
        return done
    error = ""
    attempts = 0
    for attempt in range(transient_retries + 1):
        attempts = attempt + 1
        try:
            res = _train_and_evaluate(spec, attempt)
        except MoemixError as e:
            error = f"MoemixError: {e}"
            break
        except Exception as e:  # any failure of one proxy must not kill the swarm
            error = f"{type(e).__name__}: {e}"
            log.warning(
                "proxy %s attempt %d failed: %s\n%s", spec.run_id, attempts, error, traceback.format_exc()
            )
            continue
        write_json_atomic(spec.result_path, res)
        return res
    return record_failure(spec, error, attempts)


def run_sequential(
    specs: Sequence[ProxySpec],
    *,
    transient_retries: int = 1,
    num_threads: int | None = None,
    progress: bool = False,
) -> list[ProxyResult]:
    """Run proxies one after another in this process (same results as the Ray swarm)."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    results = []
    it: Any = specs
    if progress:
        from tqdm import tqdm

        it = tqdm(specs, desc="proxies", unit="run")
    for spec in it:
        results.append(run_proxy(spec, transient_retries=transient_retries))
    return results


def _columns(domains: list[str]) -> list[str]:
    return (
        ["run_id", "status", "error", "scale", "seed"]
        + [f"w/{d}" for d in domains]
        + [f"loss/{d}" for d in domains]
        + [f"bpb/{d}" for d in domains]
        + ["target", "target_bpb", "tokens", "seconds", "params_active", "params_total"]
        + ["train_loss", "tokens_per_s", "mfu", "attempts"]
    )


def collect_runs(
    proxies_dir: str | os.PathLike[str],
    *,
    run_ids: Sequence[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    write: bool = True,
) -> pd.DataFrame:
    """The runs table (docs/ARCHITECTURE.md) of ``run_ids`` (default: every run) found under
    ``store/runs/<run_id>/result.json`` (default store: ``proxies_dir``); writes runs.parquet and
    curves.parquet into ``proxies_dir``."""
    proxies_dir = Path(proxies_dir)
    root = Path(store) if store is not None else proxies_dir
    if run_ids is None:
        paths = sorted((root / "runs").glob(f"*/{RESULT_NAME}"))
    else:
        paths = [root / "runs" / i / RESULT_NAME for i in dict.fromkeys(run_ids)]
    results = [r for p in paths if p.exists() and (r := load_result(p))]
    domains: list[str] = []
    for r in results:
        for d in r.mixture:
            if d not in domains:
                domains.append(d)
    rows = []
    for r in sorted(results, key=lambda r: (r.scale != "base", r.scale, r.index, r.run_id)):
        row: dict[str, Any] = {
            "run_id": r.run_id,
            "status": r.status,
            "error": r.error,
            "scale": r.scale,
            "seed": int(r.seed),
        }
        for d in domains:
            row[f"w/{d}"] = float(r.mixture.get(d, 0.0))
        for d in domains:
            row[f"loss/{d}"] = float(r.loss.get(d, np.nan))
        for d in domains:
            row[f"bpb/{d}"] = float(r.bpb.get(d, np.nan))
        row.update(
            target=float(r.target),
            target_bpb=float(r.target_bpb),
            tokens=int(r.tokens),
            seconds=float(r.seconds),
            params_active=int(r.params_active),
            params_total=int(r.params_total),
            train_loss=float(r.train_loss),
            tokens_per_s=float(r.tokens_per_s),
            mfu=float(r.mfu),
            attempts=int(r.attempts),
        )
        rows.append(row)
    df = pd.DataFrame(rows, columns=_columns(domains))
    if write:
        with atomic_path(proxies_dir / RUNS_TABLE) as tmp:
            df.to_parquet(tmp, index=False)
        curves = curves_table(results, domains)
        with atomic_path(proxies_dir / CURVES_TABLE) as tmp:
            curves.to_parquet(tmp, index=False)
    return df


def curves_table(results: Sequence[ProxyResult], domains: list[str]) -> pd.DataFrame:
    """Long table of the proxies' loss curves: one row per (run, evaluation point), successful runs only.

    Columns: run_id, scale, seed, step, tokens, frac (tokens / the run's tokens), w/<d>, loss/<d>, target
    (the proxy's own target: an external set's loss, else the mean of the domains). A run
    without a recorded curve contributes its final losses as one point at frac 1.
    """
    rows = []
    for r in sorted(results, key=lambda r: (r.scale != "base", r.scale, r.index, r.run_id)):
        if r.status != "ok":
            continue
        points = r.curve or [{"step": None, "tokens": r.tokens, "loss": r.loss, "target": r.target}]
        last_tokens = points[-1]["tokens"] or r.tokens or 1
        for pt in points:
            row: dict[str, Any] = {
                "run_id": r.run_id,
                "scale": r.scale,
                "seed": int(r.seed),
                "step": int(pt["step"] or 0),
                "tokens": int(pt["tokens"]),
                "frac": float(pt["tokens"]) / float(last_tokens),
            }
            row.update({f"w/{d}": float(r.mixture.get(d, 0.0)) for d in domains})
            row.update({f"loss/{d}": float(pt["loss"].get(d, np.nan)) for d in domains})
            row["target"] = float(pt.get("target", np.nan))
            rows.append(row)
    cols = (
        ["run_id", "scale", "seed", "step", "tokens", "frac"]
        + [f"w/{d}" for d in domains]
        + [f"loss/{d}" for d in domains]
        + ["target"]
    )
    return pd.DataFrame(rows, columns=cols)


def scale_transfer_report(df: pd.DataFrame) -> dict[str, Any] | None:
    """Rank agreement of proxy losses across model scales (None when no scale check ran)."""
    if not has_large_runs(df):
        return None
    out: dict[str, Any] = {"target": scale_agreement(df, "target")}
    ok = df[df["status"] == "ok"]
    for scale in ("base", "large"):
        sub = ok[ok["scale"] == scale]
        out[f"params_active_{scale}"] = int(sub["params_active"].median()) if len(sub) else 0
    return out
