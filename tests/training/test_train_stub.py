"""Training-loop mechanics (schedule, checkpoints, resume, logging) on a stub model."""

from __future__ import annotations

import math

import pytest
import torch

from moemix.errors import MoemixError
from moemix.training.checkpoint import latest_checkpoint
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig, evaluate
from moemix.training.loop import train
from moemix.training.optim import lr_at
from stub_lm import StubConfig, StubLM

MIX = {"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}


def _cfg(**kw):
    base = dict(steps=40, batch_size=8, seq_len=32, lr=1e-2, log_every=10, measure_mfu=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(steps=100, lr=1.0, min_lr_ratio=0.1, warmup_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_total_tokens_budget_rounds_up_to_whole_steps():
    cfg = TrainConfig(steps=0, total_tokens=10_000, batch_size=8, seq_len=32)
    assert cfg.num_steps == 40 and cfg.planned_tokens == 10_240


def test_train_learns_logs_and_updates_router_biases(markov_data):
    logs = []
    res = train(StubConfig(), _cfg(), markov_data, MIX, on_log=logs.append, model_factory=StubLM)
    assert [r["step"] for r in logs] == [10, 20, 30, 40]
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.3
    assert res.tokens == 40 * 8 * 32 and res.steps == 40
    assert res.tokens_per_s > 0 and res.seconds > 0
    assert res.model.bias_updates == 40
    assert sum(res.epochs.values()) > 0
    ev = evaluate(res.model, markov_data, TargetConfig(), seq_len=32, eval_tokens=512)
    assert set(ev.loss) == set(markov_data.domains)
    assert all(ev.tokens[d] == 512 for d in ev.loss)
    assert ev.target == pytest.approx(sum(ev.loss.values()) / 4)
    # bpb = nats / ln2 / bytes, bytes estimated from the valid split's bytes/tokens ratio
    ratio = markov_data.n_bytes("valid", "d0") / markov_data.n_tokens("valid", "d0")
    assert 2.9 < ratio < 3.0  # 3 bytes per regular token, EOS has none
    assert ev.bpb["d0"] == pytest.approx(ev.loss["d0"] / math.log(2) / ratio, rel=1e-9)


def test_interrupted_run_resumes_from_checkpoint_to_the_same_weights(markov_data, tmp_path):
    ref = train(StubConfig(), _cfg(), markov_data, MIX, model_factory=StubLM).model

    class Boom(Exception):
        pass

    def die_at_30(rec):
        if rec["step"] == 30:
            raise Boom

    cfg = _cfg(checkpoint_every=20)
    with pytest.raises(Boom):
        train(
            StubConfig(),
            cfg,
            markov_data,
            MIX,
            checkpoint_dir=tmp_path,
            on_log=die_at_30,
            model_factory=StubLM,
        )
    assert (
        latest_checkpoint(tmp_path) == tmp_path / "step-00000020"
    )  # the step-30 failure came before any other
    res = train(StubConfig(), cfg, markov_data, MIX, checkpoint_dir=tmp_path, model_factory=StubLM)
    assert res.resumed_from_step == 20
    for a, b in zip(ref.state_dict().values(), res.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    # a different mixture must not silently resume someone else's checkpoint
    with pytest.raises(MoemixError, match="different model/train config or mixture"):
        train(StubConfig(), cfg, markov_data, {"d0": 1.0}, checkpoint_dir=tmp_path, model_factory=StubLM)


def test_cap_is_enforced_before_training(markov_data):
    with pytest.raises(MoemixError, match="domain 'd3'"):
        train(StubConfig(), _cfg(steps=200, max_epochs=1.0), markov_data, MIX, model_factory=StubLM)


def test_external_target_is_pooled_loss_of_the_external_set(markov_data, markov_tokens, tmp_path):
    from moemix.proxies.synthetic import MarkovDomain, write_target_set

    chains = [MarkovDomain(64, 0, i) for i in range(4)]  # same seeds as write_markov_domains(seed=0)
    write_target_set(tmp_path / "ext", chains, {"d0": 1.0}, valid_tokens=1500)
    res = train(StubConfig(), _cfg(steps=30), markov_data, MIX, model_factory=StubLM)
    ev = evaluate(
        res.model, markov_data, TargetConfig(external=str(tmp_path / "ext")), seq_len=32, eval_tokens=512
    )
    # the external set is d0-only text: its loss is close to d0's, far from a different domain's
    assert abs(ev.target - ev.loss["d0"]) < 0.15
    assert abs(ev.target - ev.loss["d0"]) < abs(ev.target - ev.loss["d3"])
    weighted = evaluate(
        res.model, markov_data, TargetConfig(domains={"d1": 3, "d2": 1}), seq_len=32, eval_tokens=512
    )
    assert weighted.target == pytest.approx(0.75 * weighted.loss["d1"] + 0.25 * weighted.loss["d2"])
