"""Experiment tracking in MLflow (``tracking.mlflow_uri``): a run's mixture and losses, and its pretraining.

Optional: ``pip install moemix[mlflow]`` (``mlflow-skinny`` is enough); mlflow is imported only when
``tracking.mlflow_uri`` is set, so a run without it never loads mlflow. Execution-only: tracking changes
where results are reported, not what any stage computes, so no cache key sees it.

What lands, per finished ``moemix run`` (one MLflow run, with one nested run per pretrained mixture):

- the run: params ``w/<domain>`` (the chosen mixture), the guard's decision, the predictor and the stage
  keys; metrics the predicted target loss, the baselines' predictions, the CV Spearman and each
  pretrained mixture's final target loss (``pretrain/<name>/target_loss``);
- each pretrained mixture (``chosen``, ``uniform``, ``natural``): params its weights; metrics its training
  curve from ``metrics.jsonl`` (``train/loss`` ... per step) and its final losses (``target_loss``,
  ``target_bpb``, ``loss/<domain>``).

Logged from the driver after the stages, from the files they wrote, so Ray Train workers need neither
mlflow nor a route to the tracking server. Once per result: the MLflow run is tagged with a hash of the
run dir and the stage keys it reports, and re-running a finished (cached) run logs nothing new.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemix._io import stable_hash
from moemix.config_fields import execution_only
from moemix.errors import MoemixError
from moemix.report.collect import PRETRAIN_RUNS, ReportData, collect

log = logging.getLogger(__name__)

KEY_TAG = "moemix.key"
# MLflow's log_batch takes at most 1000 metrics and 100 params per call
_MAX_METRICS, _MAX_PARAMS = 1000, 100


@dataclass
class TrackingConfig:
    """Where a run is reported; nothing here changes what it computes (no cache key sees it)."""

    # an MLflow tracking URI (http://host:5000, file:/path/mlruns, databricks, ...); null: no MLflow
    mlflow_uri: str | None = execution_only(None)
    mlflow_experiment: str = execution_only("moemix")

    def validate(self) -> None:
        if self.mlflow_uri is not None and not self.mlflow_uri.strip():
            raise ValueError("tracking.mlflow_uri must be a tracking URI or null")
        if not self.mlflow_experiment.strip():
            raise ValueError("tracking.mlflow_experiment must not be empty")


def _numbers(rec: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in rec.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _weights(weights: Mapping[str, float] | None) -> dict[str, str]:
    return {f"w/{d}": f"{float(w):.6g}" for d, w in (weights or {}).items()}


def run_summary(data: ReportData) -> tuple[dict[str, str], dict[str, float]]:
    """The whole run's params (the mixture, the decision, the stage keys) and metrics (target losses)."""
    doc = data.mixture or {}
    chosen = data.chosen_weights or (data.pretrain_results.get("chosen") or {}).get("mixture")
    params = _weights(chosen)
    params.update({f"stage/{name}": st.key for name, st in data.stages.items() if st is not None})
    decision = doc.get("decision") or {}
    for key, value in (
        ("predictor", doc.get("predictor")),
        ("proposer", (doc.get("proposer") or {}).get("name")),
        ("decision", decision.get("action")),
        ("decision_baseline", decision.get("baseline") if decision.get("action") != "optimum" else None),
        ("target", (doc.get("target") or {}).get("name")),
        ("n_proxies", doc.get("n_proxies")),
    ):
        if value is not None:
            params[key] = str(value)[:500]
    base = doc.get("baselines") or {}
    metrics = _numbers(
        {
            "predicted_target_loss": doc.get("predicted_target_loss"),
            "predicted/uniform": base.get("uniform"),
            "predicted/natural": base.get("natural"),
            "cv_spearman": doc.get("cv_spearman"),
        }
    )
    comp = data.comparison or {}
    for name in PRETRAIN_RUNS:
        res = comp.get(name) if isinstance(comp.get(name), dict) else None
        if res:
            metrics.update(_numbers({f"pretrain/{name}/target_loss": res.get("target_loss")}))
    metrics.update(_numbers({"pretrain/improvement_vs_uniform": comp.get("improvement_vs_uniform")}))
    return params, metrics


def _allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store ("maintenance mode") unless opted in; naming a file store in the
    config is that choice, so it is opted in for this process."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def require_mlflow() -> None:
    """A one-line MoemixError when tracking is asked for and mlflow is not installed (mlflow itself is
    not imported here)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise MoemixError(
            "tracking.mlflow_uri is set but mlflow is not installed (pip install 'moemix[mlflow]')"
        )


def log_to_mlflow(
    cfg: TrackingConfig, run_dir: str | Path, stages: Mapping[str, Path] | None = None
) -> str | None:
    """Log the run in ``run_dir`` (``stages``: the exact stage directories) to ``cfg.mlflow_uri``; returns
    the MLflow run id (None when tracking is off). A run already logged is found by its tag, not logged
    again."""
    if not cfg.mlflow_uri:
        return None
    _allow_file_store(cfg.mlflow_uri)
    require_mlflow()
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir).resolve()
    data = collect(run_dir, stages)
    keys = {name: st.key for name, st in data.stages.items() if st is not None}
    key = stable_hash({"run_dir": str(run_dir), "stages": keys, "pretrained": sorted(data.pretrain_results)})
    client = MlflowClient(tracking_uri=cfg.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.mlflow_experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.mlflow_experiment)
    # the run and its nested runs carry the key; the run is marked finished last, after its nested runs
    found = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
    finished = RunStatus.to_string(RunStatus.FINISHED)
    done = [r for r in found if r.data.tags.get("moemix.kind") == "run" and r.info.status == finished]
    if done:
        log.info("mlflow: run already logged as %s", done[0].info.run_id)
        return done[0].info.run_id
    for old in found:  # a logging interrupted part-way: log it whole again
        client.delete_run(old.info.run_id)

    def log_batch(run_id: str, params: Mapping[str, str], metrics: list[Any]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            client.log_batch(run_id, params=items[i : i + _MAX_PARAMS])
        for i in range(0, len(metrics), _MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS])

    now = int(time.time() * 1000)
    tags = {KEY_TAG: key, "moemix.run_dir": str(run_dir)}
    parent = client.create_run(exp_id, run_name=f"moemix {run_dir.name}", tags={**tags, "moemix.kind": "run"})
    pid = parent.info.run_id
    params, metrics = run_summary(data)
    log_batch(pid, params, [Metric(k, v, now, 0) for k, v in metrics.items()])

    twins = {n: r.get("same_as") for n, r in (data.comparison or {}).items() if isinstance(r, dict)}
    for name, res in data.pretrain_results.items():
        also = [n for n, t in twins.items() if t == name]
        child_tags = {**tags, "moemix.kind": "pretrain", "mlflow.parentRunId": pid, "moemix.mixture": name}
        if also:
            child_tags["moemix.same_as"] = ",".join(also)  # baselines equal to this mixture, not retrained
        child = client.create_run(exp_id, run_name=f"pretrain {name}", tags=child_tags)
        curve = [
            Metric(f"train/{k}", v, int(float(rec.get("time", now / 1000)) * 1000), int(rec["step"]))
            for rec in data.pretrain_metrics.get(name, [])
            if "step" in rec
            for k, v in _numbers(rec, skip=("step", "time", "total_steps")).items()
        ]
        final = _numbers({"target_loss": res.get("target_loss"), "target_bpb": res.get("target_bpb")})
        final.update(_numbers({f"loss/{d}": v for d, v in (res.get("loss") or {}).items()}))
        steps = max((m.step for m in curve), default=0)
        log_batch(
            child.info.run_id,
            _weights(res.get("mixture")),
            curve + [Metric(k, v, now, steps) for k, v in final.items()],
        )
        client.set_terminated(child.info.run_id)
    client.set_terminated(pid)
    log.info("mlflow: logged run %s to %s", pid, cfg.mlflow_uri)
    return pid
