"""Run directories for the report tests: hand-written ones (instant) and a real finished run (slow)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
DOMAINS = ["code", "prose", "mail"]


def _tiny_config() -> dict:
    """The pipeline tests' tiny config (tests/pipeline/conftest.py), loaded by path: test directories
    are not packages."""
    spec = importlib.util.spec_from_file_location(
        "_pipeline_conftest", HERE.parent / "pipeline" / "conftest.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return copy.deepcopy(mod.TINY)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, ray_session) -> Path:
    """A real run of every stage on the tiny config (about 90 s on 2 cores), pretraining included; its
    config is ``tiny.yaml`` beside it. Shared by the report and tracking tests: do not edit it."""
    from moemix.pipeline.config import load_config
    from moemix.ray_jobs.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("report_run")
    cfg = _tiny_config()
    cfg["pretrain"]["train"]["lr"] = 1e-2  # a visibly falling loss curve in 10 steps
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = run_pipeline(load_config(root / "tiny.yaml"), root / "run", progress=False)
    assert res.pretrain is not None and math.isfinite(res.pretrain.comparison["chosen"]["target_loss"])
    return root / "run"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _manifest(run: Path, stage: str, key: str, inputs: dict, outputs: dict) -> None:
    _write(
        run / stage / key / "manifest.json",
        {"stage": stage, "key": key, "inputs": inputs, "outputs": outputs},
    )


def write_run_dir(
    run: Path, *, n_proxies: int = 6, upto: str = "pretrain", proxies_done: int | None = None
) -> Path:
    """A run directory as the pipeline lays it out, written by hand: ``upto`` the last complete stage,
    ``proxies_done`` of the swarm finished when the proxies stage is still running. Proxy 1 failed."""
    tokens = {"code": 600, "prose": 300, "mail": 100}
    _manifest(run, "domains", "dk", {}, {"domains": DOMAINS, "train_tokens": tokens})
    if upto == "domains" and proxies_done is None:
        return run
    ids = [f"p{i:02d}abcdef" for i in range(n_proxies)]
    _write(run / "proxies" / "pk" / "swarm.json", {"run_ids": ids, "rounds": 1})
    done = n_proxies if proxies_done is None else proxies_done
    for i, run_id in enumerate(ids[:done]):
        w = [(i + 1) / 10, 0.5, 1 - (i + 1) / 10 - 0.5]
        w = [max(x, 0.0) for x in w]
        w = [x / sum(w) for x in w]
        mix = dict(zip(DOMAINS, w))
        res = {"run_id": run_id, "status": "ok", "scale": "base", "index": i, "seed": 0, "mixture": mix}
        if i == 1:
            res.update(status="failed", error="RuntimeError: boom")
        else:
            res["loss"] = {d: 3.0 - w[j] + 0.01 * i for j, d in enumerate(DOMAINS)}
            res["target"] = sum(res["loss"].values()) / 3
        _write(run / "proxies" / "runs" / run_id / "result.json", res)
    if proxies_done is not None:
        return run
    rounds = {"run": 2, "auto": "a second round: a fit of the first swarm would move away from uniform"}
    outputs = {"runs": "runs.parquet", "n_ok": n_proxies - 1, "rounds": rounds}
    _manifest(run, "proxies", "pk", {"domains": "dk"}, outputs)
    if upto == "proxies":
        return run
    actual = [3.0 + 0.1 * i for i in range(n_proxies - 1)]
    cv = {"spearman": 0.9, "pearson": 0.8, "mae": 0.01, "kind": "kfold", "folds": 3, "n": n_proxies - 1}
    cv["oof"] = {"actual": actual, "predicted": [a + 0.02 for a in actual]}
    _write(run / "fit" / "fk" / "cv.json", cv)
    _manifest(run, "fit", "fk", {"proxies": "pk"}, {"predictor": "linear"})
    if upto == "fit":
        return run
    doc = {
        "domains": [{"name": d, "weight": w, "tokens": tokens[d]} for d, w in zip(DOMAINS, [0.5, 0.3, 0.2])],
        "predicted_target_loss": 2.7,
        "baselines": {"uniform": 2.8, "natural": 2.75},
        "predictor": "linear",
        "cv_spearman": 0.9,
        "n_proxies": n_proxies,
        "created_at": "2026-01-01T00:00:00Z",
        "decision": {"action": "optimum", "reason": None},
        "proposer": {"name": "constrained", "why": "auto: the target leaves out 1 of 3 domains"},
    }
    _write(run / "propose" / "ok" / "mixture.json", doc)
    _manifest(run, "propose", "ok", {"fit": "fk", "domains": "dk"}, {"mixture": "mixture.json"})
    _write(run / "mixture.json", doc)
    if upto == "propose":
        return run
    pre = run / "pretrain" / "tk"
    comparison = {}
    # as the pipeline lays them out: each run in the store RUN_DIR/pretrain/runs/, named by runs.json
    _write(pre / "runs.json", {name: f"../runs/r-{name}" for name in ("chosen", "uniform", "natural")})
    for j, name in enumerate(("chosen", "uniform", "natural")):
        recs = [{"step": s, "loss": 6.0 - 0.1 * s - 0.05 * j, "total_steps": 20} for s in (5, 10, 15, 20)]
        store = run / "pretrain" / "runs" / f"r-{name}"
        store.mkdir(parents=True)
        (store / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        comparison[name] = {
            "target_loss": 4.0 + 0.1 * j,
            "tokens": 5120,
            "same_as": None,
            "run_dir": str(store),
        }
        counts = {d: [[10 + k, 20, 30 - k, 4 * k + 1], [5, 5, 5, 5 + k]] for k, d in enumerate(DOMAINS)}
        load = {"counts": counts, "tokens": {d: 40 for d in DOMAINS}, "top_k": 2, "split": "valid"}
        _write(store / "result.json", {"target_loss": 4.0 + 0.1 * j, "expert_load": load})
    comparison["verdict"] = {"verdict": "chosen 4.0000 beats uniform 4.1000, natural 4.2000"}
    _write(pre / "comparison.json", comparison)
    _manifest(run, "pretrain", "tk", {"propose": "ok", "domains": "dk"}, {"comparison": comparison})
    return run


@pytest.fixture
def synthetic_run(tmp_path) -> Path:
    return write_run_dir(tmp_path / "run")


@pytest.fixture
def make_run_dir():
    return write_run_dir
