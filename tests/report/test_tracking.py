"""MLflow tracking (``tracking.mlflow_uri``) against a local file store: runs, params and metrics land,
once per result; without the key nothing imports mlflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moemix.report.tracking import TrackingConfig, log_to_mlflow

mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="mlflow not installed (the dev extra has it)")


def _runs(uri: str) -> tuple[object, list]:
    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("moemix")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def _split(runs: list) -> tuple[object, dict[str, object]]:
    (parent,) = [r for r in runs if r.data.tags.get("moemix.kind") == "run"]
    children = {
        r.data.tags["moemix.mixture"]: r for r in runs if r.data.tags.get("moemix.kind") == "pretrain"
    }
    return parent, children


def test_a_run_its_mixture_and_its_pretraining_land_in_a_file_store(synthetic_run, tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    run_id = log_to_mlflow(TrackingConfig(mlflow_uri=uri), synthetic_run)
    client, runs = _runs(uri)
    parent, children = _split(runs)
    assert parent.info.run_id == run_id and parent.info.status == "FINISHED"
    p = parent.data
    assert {k: float(v) for k, v in p.params.items() if k.startswith("w/")} == {
        "w/code": 0.5,
        "w/prose": 0.3,
        "w/mail": 0.2,
    }
    assert p.params["decision"] == "optimum" and p.params["stage/propose"] == "ok"
    assert p.params["proposer"] == "constrained"
    assert p.metrics["predicted_target_loss"] == pytest.approx(2.7)
    assert p.metrics["predicted/uniform"] == pytest.approx(2.8)
    assert {k: round(v, 6) for k, v in p.metrics.items() if k.startswith("pretrain/")} == {
        "pretrain/chosen/target_loss": 4.0,
        "pretrain/uniform/target_loss": 4.1,
        "pretrain/natural/target_loss": 4.2,
    }
    # one nested run per pretrained mixture, with its training curve and its final loss
    assert sorted(children) == ["chosen", "natural", "uniform"]
    for j, name in enumerate(("chosen", "uniform", "natural")):
        child = children[name]
        assert child.data.tags["mlflow.parentRunId"] == run_id and child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert [(m.step, round(m.value, 6)) for m in history] == [
            (s, round(6.0 - 0.1 * s - 0.05 * j, 6)) for s in (5, 10, 15, 20)
        ]
        assert child.data.metrics["target_loss"] == pytest.approx(4.0 + 0.1 * j)

    # a re-run of the same finished run logs nothing new
    assert log_to_mlflow(TrackingConfig(mlflow_uri=uri), synthetic_run) == run_id
    assert len(_runs(uri)[1]) == len(runs) == 4
    # one whose logging was cut short (the run never marked finished) is logged whole again
    client.update_run(run_id, status="RUNNING")
    again = log_to_mlflow(TrackingConfig(mlflow_uri=uri), synthetic_run)
    assert again != run_id and len(_runs(uri)[1]) == 4 and _split(_runs(uri)[1])[0].info.run_id == again


def test_without_the_key_nothing_imports_mlflow(synthetic_run):
    code = (
        "import sys; from moemix.pipeline.config import load_config; import moemix.ray_jobs.pipeline; "
        "from moemix.report import write_report; from moemix.report.tracking import log_to_mlflow; "
        "cfg = load_config(None); assert cfg.tracking.mlflow_uri is None; "
        "assert log_to_mlflow(cfg.tracking, sys.argv[1]) is None; write_report(sys.argv[1]); "
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(synthetic_run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def _stage_files(run: Path) -> dict[str, object]:
    # rewritten by every run (the published mixture.json with the same bytes)
    skip = ("config.resolved.yaml", ".moemix.lock", "report.html", "mixture.json")
    stamps = {
        str(p.relative_to(run)): p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and str(p.relative_to(run)) not in skip and "ray_train" not in p.parts
    }
    return {**stamps, "mixture.json": (run / "mixture.json").read_bytes()}


@pytest.mark.slow
def test_setting_the_key_on_a_finished_run_trains_nothing_and_logs_it(finished_run, tmp_path):
    from moemix.pipeline.config import load_config
    from moemix.ray_jobs.pipeline import run_pipeline

    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config(finished_run.parent / "tiny.yaml", overrides={"tracking": {"mlflow_uri": uri}})
    before = _stage_files(finished_run)
    res = run_pipeline(cfg, finished_run, progress=False)
    assert _stage_files(finished_run) == before  # tracking is in no key: every stage was cached

    client, runs = _runs(uri)
    parent, children = _split(runs)
    doc = json.loads((finished_run / "mixture.json").read_text())
    assert {k[2:]: float(v) for k, v in parent.data.params.items() if k.startswith("w/")} == pytest.approx(
        {d["name"]: d["weight"] for d in doc["domains"]}, rel=1e-5
    )
    comp = res.pretrain.comparison
    assert parent.data.metrics["pretrain/chosen/target_loss"] == pytest.approx(comp["chosen"]["target_loss"])
    assert parent.data.metrics["pretrain/uniform/target_loss"] == pytest.approx(
        comp["uniform"]["target_loss"]
    )
    trained = sorted(n for n in ("chosen", "uniform", "natural") if comp[n]["same_as"] is None)
    assert sorted(children) == trained
    metrics = [
        json.loads(line)
        for line in (Path(comp["chosen"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    history = client.get_metric_history(children["chosen"].info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [
        (r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in metrics
    ]
    # and a second re-run finds the logged run instead of logging a duplicate
    run_pipeline(cfg, finished_run, progress=False)
    assert len(_runs(uri)[1]) == len(runs)
