"""The training loop on the real MoE model: learning, evaluation, resume, bf16 (distributed runs:
test_distributed)."""

from __future__ import annotations

import math

import pytest
import torch

from moemix.moe_model import MoEConfig, MoETransformer
from moemix.training.config import TrainConfig
from moemix.training.evaluate import evaluate
from moemix.training.loop import train

TINY = MoEConfig(
    vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_expert=32
)
MIX = {"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}


def _cfg(**kw):
    base = dict(steps=40, batch_size=8, seq_len=32, lr=1e-2, log_every=10, measure_mfu=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_moe_learns_and_reports_flops_and_mfu(markov_data):
    res = train(TINY, _cfg(measure_mfu=True), markov_data, MIX)
    assert res.history[-1]["loss"] < res.history[0]["loss"] - 0.5
    assert res.params_active < res.params_total
    assert res.flops_per_token == res.model.flops_per_token(32)
    assert res.achieved_flops_per_s == pytest.approx(res.tokens_per_s * res.flops_per_token, rel=1e-6)
    assert 0 < res.mfu < 1 and res.peak_flops_per_s > 1e8
    load = torch.tensor(res.expert_load_by_domain)  # [layers, domains, experts] shares
    assert load.shape == (2, 4, 4)
    torch.testing.assert_close(load.sum(-1), torch.ones(2, 4), atol=1e-6, rtol=0)
    ev = evaluate(res.model, markov_data, None, seq_len=32, eval_tokens=512)
    # learned something: below a uniform guess (ln 64 = 4.16) and the same model untrained (~4.3), per domain
    torch.manual_seed(0)
    untrained = evaluate(MoETransformer(TINY), markov_data, None, seq_len=32, eval_tokens=512)
    for d, v in ev.loss.items():
        assert v < math.log(64) - 0.1 and v < untrained.loss[d] - 0.3, (d, v, untrained.loss[d])
    assert sum(ev.loss.values()) / len(ev.loss) < math.log(64) - 0.5, ev.loss  # measured 3.2


def test_moe_resume_matches_uninterrupted(markov_data, tmp_path):
    cfg = _cfg(steps=20, checkpoint_every=10)
    ref = train(TINY, cfg, markov_data, MIX).model

    def stop(rec):
        if rec["step"] == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            TINY,
            _cfg(steps=20, checkpoint_every=10, log_every=10),
            markov_data,
            MIX,
            checkpoint_dir=tmp_path,
            on_log=stop,
        )
    res = train(TINY, cfg, markov_data, MIX, checkpoint_dir=tmp_path)
    assert res.resumed_from_step == 10
    for (k, a), b in zip(ref.state_dict().items(), res.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_bf16_precision_runs_autocast_on_cpu(markov_data, monkeypatch):
    """precision bf16 on CPU trains under bf16 autocast (fp32 master weights), learns like fp32,
    and reports MFU against the bf16 matmul peak."""
    import moemix.training.loop as train_mod

    seen: list[torch.dtype] = []
    real = train_mod.make_autocast

    def spy(device, precision):
        ctx = real(device, precision)
        seen.append(ctx.fast_dtype if ctx._enabled else torch.float32)
        return ctx

    monkeypatch.setattr(train_mod, "make_autocast", spy)
    peaks: list[str] = []
    monkeypatch.setattr(
        train_mod, "peak_matmul_flops", lambda device, precision: peaks.append(precision) or 1e12
    )
    fp32 = train(TINY, _cfg(), markov_data, MIX)
    bf16 = train(TINY, _cfg(precision="bf16", measure_mfu=True), markov_data, MIX)
    assert seen == [torch.float32, torch.bfloat16] and peaks == ["bf16"]
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.history[-1]["loss"] < bf16.history[0]["loss"] - 0.5
    assert abs(bf16.history[-1]["loss"] - fp32.history[-1]["loss"]) < 0.1
    assert bf16.history[-1]["loss"] != fp32.history[-1]["loss"]  # the bf16 path really ran
