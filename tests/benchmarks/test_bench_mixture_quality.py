"""benchmarks/bench_mixture_quality.py: the cached pretraining and the scoring (no pipeline run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moemix.moe_model import MoEConfig
from moemix.proxies.synthetic import write_markov_domains
from moemix.training.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # spawned workers inherit it
import bench_mixture_quality as bmq  # noqa: E402


def test_parse_target_and_loss() -> None:
    assert bmq.parse_target("mean") is None
    assert bmq.parse_target("a:1,b:3") == {"a": 1.0, "b": 3.0}
    with pytest.raises(SystemExit):
        bmq.parse_target("a")
    loss = {"a": 1.0, "b": 2.0, "c": 6.0}
    assert bmq.target_loss(loss, None) == pytest.approx(3.0)
    assert bmq.target_loss(loss, {"a": 1, "b": 3}) == pytest.approx(1.75)
    assert bmq.slug("code:1,prose:1") == "code-1-prose-1"


def test_score_ranks_and_margin() -> None:
    losses = {"chosen/mean": 1.0, "chosen/mean@seed1": 1.2, "u0": 1.5, "u1": 1.7, "natural": 0.9}
    res = {n: {"loss": {"a": v}} for n, v in losses.items()}
    sc = bmq.score(
        res, ["chosen/mean", "u0", "natural"], ["u0", "u1"], ["chosen/mean", "chosen/mean@seed1"], None
    )
    assert sc["rank"] == 2 and sc["n_ranked"] == 3
    assert sc["uniform_spread"] == pytest.approx(0.2)
    assert sc["margin_vs_uniform"] == pytest.approx(0.5) and sc["paired_margins"] == pytest.approx([0.5, 0.5])
    assert not sc["pass"]  # natural beat it: a margin over uniform alone is not enough
    res["natural"] = {"loss": {"a": 1.6}}
    assert bmq.score(res, ["chosen/mean", "u0", "natural"], ["u0", "u1"], ["chosen/mean"], None)["pass"]


def test_pretrain_all_caches(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    write_markov_domains(tokens, n_domains=3, vocab_size=32, train_tokens=3000, valid_tokens=400)
    model = MoEConfig(
        vocab_size=32, max_seq_len=16, d_model=16, n_layers=1, n_heads=2, n_experts=4, top_k=2, d_expert=16
    )
    train = TrainConfig(
        steps=3, batch_size=2, seq_len=16, eval_tokens=64, eval_batch_size=4, measure_mfu=False, device="cpu"
    )
    uni = {d: 1 / 3 for d in ("d0", "d1", "d2")}
    runs = {
        "uniform@seed0": (uni, 0),
        "uniform@seed1": (uni, 1),
        "natural": (dict(uni), 0),
    }  # natural == uniform here
    out = bmq.pretrain_all(runs, model, train, tokens, tmp_path / "cache", jobs=1)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # same mixture + seed -> one run
    assert out["natural"]["key"] == out["uniform@seed0"]["key"] != out["uniform@seed1"]["key"]
    assert set(out["natural"]["loss"]) == {"d0", "d1", "d2"} and out["natural"]["tokens"] == 3 * 2 * 16
    again = bmq.pretrain_all(runs, model, train, tokens, tmp_path / "cache", jobs=1)
    assert all(r["cached"] for r in again.values())
    assert again["uniform@seed1"]["loss"] == out["uniform@seed1"]["loss"]
