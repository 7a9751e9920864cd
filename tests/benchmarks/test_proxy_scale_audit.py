"""benchmarks/proxy_scale_audit.py: which candidates it trains and how it pairs their seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import proxy_scale_audit as psa  # noqa: E402

DOMAINS = ["a", "b"]


def _quality() -> dict:
    return {
        "targets": {
            # the guard shipped uniform and withheld an optimum
            "mean": {
                "mixture": {
                    "weights": {"a": 0.5, "b": 0.5},
                    "decision": {"action": "baseline", "optimum": {"a": 0.7, "b": 0.3}},
                },
                "paired_margins": [0.0, 0.0],
                "withheld": {"paired_margins": [-0.02, -0.04]},
            },
            # shipped the optimum itself: nothing withheld to audit
            "a:1": {
                "mixture": {
                    "weights": {"a": 0.9, "b": 0.1},
                    "decision": {"action": "optimum", "optimum": {"a": 0.9, "b": 0.1}},
                },
                "paired_margins": [0.3, 0.5],
            },
        }
    }


def test_candidates_skip_uniform_and_shipped_optima() -> None:
    runs = psa.candidates(_quality(), DOMAINS, seeds=2)
    assert sorted(runs) == sorted(
        ["uniform@0", "uniform@1", "optimum/mean@0", "optimum/mean@1", "shipped/a:1@0", "shipped/a:1@1"]
    )
    assert runs["optimum/mean@1"] == ({"a": 0.7, "b": 0.3}, 1)
    assert runs["uniform@0"] == ({"a": 0.5, "b": 0.5}, 0)


def test_audit_pairs_each_seed_with_uniforms_same_seed() -> None:
    losses = {
        "uniform@0": {"a": 2.0, "b": 4.0},
        "uniform@1": {"a": 2.2, "b": 4.2},
        "optimum/mean@0": {"a": 1.9, "b": 4.0},  # mean 2.95 vs uniform 3.0
        "optimum/mean@1": {"a": 2.2, "b": 4.4},  # mean 3.3 vs uniform 3.2
        "shipped/a:1@0": {"a": 1.5, "b": 5.0},
        "shipped/a:1@1": {"a": 1.6, "b": 5.0},
    }
    rows = {(r["target"], r["candidate"]): r for r in psa.audit(_quality(), losses, seeds=2)}
    assert set(rows) == {("mean", "optimum"), ("a:1", "shipped")}
    opt = rows["mean", "optimum"]
    assert opt["proxy_gains"] == pytest.approx([0.05, -0.1])
    assert opt["proxy_gain"] == pytest.approx(-0.025)
    assert opt["proxy_uniform_spread"] == pytest.approx(0.2)
    assert opt["pretrain_gain"] == pytest.approx(-0.03)
    shipped = rows["a:1", "shipped"]
    assert shipped["proxy_gains"] == pytest.approx([0.5, 0.6])
    assert shipped["pretrain_gain"] == pytest.approx(0.4)
