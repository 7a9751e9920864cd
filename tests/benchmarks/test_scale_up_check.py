"""benchmarks/scale_up_check.py: the plan it builds from a quality benchmark's mixtures, a budgeted
training pass (a tiny model on CPU; the real one runs on a lent GPU), and the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from moemix.proxies.synthetic import write_markov_domains

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale_up_check as suc  # noqa: E402

DOMAINS = ["d0", "d1", "d2"]


def _mixture(weights: dict[str, float], target: str, decision: dict) -> dict:
    return {
        "domains": [{"name": d, "weight": w} for d, w in weights.items()],
        "target": {"name": target},
        "domains_fingerprint": "fp0",
        "decision": decision,
    }


def _quality_dir(root: Path) -> Path:
    qd = root / "quality-toy"
    write_markov_domains(
        qd / "run" / "domains" / "fp0" / "tokens", n_domains=3, vocab_size=64, train_tokens=20_000
    )
    mean = " + ".join(f"0.333333*loss/{d}" for d in DOMAINS)
    uniform = {d: 1 / 3 for d in DOMAINS}
    (qd / "mixture-mean.json").write_text(
        json.dumps(
            _mixture(uniform, mean, {"action": "baseline", "optimum": {"d0": 0.5, "d1": 0.3, "d2": 0.2}})
        )
    )
    (qd / "mixture-d0-1.json").write_text(
        json.dumps(
            _mixture(
                {"d0": 0.7, "d1": 0.2, "d2": 0.1},
                "1*loss/d0",
                {"action": "shrunk", "optimum": {"d0": 0.8, "d1": 0.1, "d2": 0.1}},
            )
        )
    )
    return qd


def test_plan_orders_the_telling_runs_first_and_reads_targets(tmp_path):
    suc.prepare([_quality_dir(tmp_path)], tmp_path / "gpu")
    plan = json.loads((tmp_path / "gpu" / "plan.json").read_text())
    assert plan["corpora"]["toy"]["targets"] == {"d0-1": {"d0": 1.0}, "mean": None}
    assert (tmp_path / "gpu" / plan["corpora"]["toy"]["tokens"] / "meta.json").exists()
    names = [(r["name"], r["seed"]) for r in plan["runs"]]
    # a shipped baseline is not trained twice; a shrunk decision's optimum is trained next to it
    assert names[:4] == [("uniform", 0), ("chosen/d0-1", 0), ("withheld/d0-1", 0), ("withheld/mean", 0)]
    assert ("chosen/mean", 0) not in names
    assert names.index(("natural", 0)) < names.index(("uniform", 1)) < names.index(("random_0", 0))


def test_training_stops_on_budget_and_keeps_what_finished(tmp_path, capsys):
    suc.prepare([_quality_dir(tmp_path)], tmp_path / "gpu")
    plan_path = tmp_path / "gpu" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["model"] = dict(d_model=16, n_layers=1, n_heads=2, n_experts=4, top_k=2, d_expert=16, max_seq_len=32)
    plan["train"] = {**plan["train"], "seq_len": 32, "batch_size": 4, "eval_tokens": 256, "precision": "fp32"}
    plan_path.write_text(json.dumps(plan))
    results = tmp_path / "results.json"
    suc.train_plan(plan_path, results, budget_s=0.0, steps=2)  # the first run, then out of budget
    done = json.loads(results.read_text())
    assert list(done) == ["toy|uniform|0"]
    assert set(done["toy|uniform|0"]["loss"]) == set(DOMAINS)
    suc.train_plan(plan_path, results, budget_s=0.0, steps=2)  # resumes after what is recorded
    assert list(json.loads(results.read_text())) == ["toy|uniform|0", "toy|chosen/d0-1|0"]
    suc.report(plan_path, results)
    out = capsys.readouterr().out
    assert "toy, target d0-1:" in out and "chosen vs uniform, same-seed margins" in out
