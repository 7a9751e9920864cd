"""MoE transformer: learns, is causal, agrees across kernel impls, counts params/FLOPs sensibly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moemix.moe_model import MoEConfig, MoEOutput, MoETransformer

TINY = MoEConfig(
    vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, n_experts=4, top_k=2, d_expert=32
)


def tiny(**kw) -> MoETransformer:
    torch.manual_seed(0)
    return MoETransformer(dataclasses.replace(TINY, **kw))


def test_loss_decreases_on_repeated_sequence():
    model = tiny(n_shared_experts=1)
    seq = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        out = model(x, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_router_biases()
        first = first if first is not None else out.lm_loss.item()
    assert isinstance(out, MoEOutput)
    assert out.lm_loss.item() < 0.5 * first, (first, out.lm_loss.item())


@pytest.mark.parametrize("kw", [{}, {"n_dense_layers": 1, "n_kv_heads": 2, "granularity": 2}])
def test_causal(kw):
    model = tiny(**kw).eval()
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 64
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4


def test_impls_give_same_model_output_and_grads():
    results = {}
    for impl in ("reference", "grouped", "auto"):
        model = tiny(kernel_impl=impl, n_shared_experts=1)
        ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(3))
        out = model(ids, ids, return_logits=True)
        out.loss.backward()
        grad = model.blocks[1].ffn.experts.w_gate_up.grad.clone()
        results[impl] = (out.logits.detach(), out.loss.detach(), grad)
    for impl in ("grouped", "auto"):
        for r, g in zip(results["reference"], results[impl]):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_output_fields_and_ignore_index():
    model = tiny(balance="none", z_loss_coef=0.0)
    ids = torch.randint(0, 64, (2, 8))
    out = model(ids)
    assert out.loss is None and out.lm_loss is None and out.logits.shape == (2, 8, 64)
    assert out.aux_loss.item() == 0 and out.z_loss.item() == 0
    tgt = ids.clone()
    tgt[:, :4] = -100
    full = torch.nn.functional.cross_entropy(out.logits[:, 4:].reshape(-1, 64), ids[:, 4:].reshape(-1))
    torch.testing.assert_close(model(ids, tgt).lm_loss, full)


def test_param_counts_and_flops():
    cfg = dataclasses.replace(TINY, tie_embeddings=True)
    model = MoETransformer(cfg)
    d, f, e, k, L = cfg.d_model, cfg.d_expert, cfg.n_experts, cfg.top_k, cfg.n_layers
    expert = 3 * d * f
    total = model.num_params()
    assert total - model.num_params(active_only=True) == L * (e - k) * expert
    attn = d * (3 * d) + d * d
    router = d * e
    expected = cfg.vocab_size * d + L * (attn + router + e * expert + 2 * d) + d
    assert total == expected
    active_matmul = L * (attn + router + k * expert) + cfg.vocab_size * d
    assert model.flops_per_token(16) == 6 * active_matmul + 12 * L * d * 16
    # fine-graining keeps expert params (total and active) fixed; only the router grows (2e outputs)
    fg = MoETransformer(dataclasses.replace(cfg, granularity=2))
    assert fg.num_params() - total == L * d * e
    assert fg.num_params(active_only=True) - model.num_params(active_only=True) == L * d * e


def test_expert_load_and_domains():
    model = tiny(n_dense_layers=1)
    ids = torch.randint(0, 64, (3, 10))
    model(ids)
    load = model.expert_load()
    assert load.shape == (1, 4) and load.sum() == 3 * 10 * 2
    by_dom = model.expert_load_by_domain(torch.tensor([0, 2, 0]), n_domains=3)
    assert by_dom.shape == (1, 3, 4)
    assert torch.equal(by_dom.sum(1), load)
    assert by_dom[0, 1].sum() == 0 and by_dom[0, 2].sum() == 20
    per_tok = torch.zeros(3, 10, dtype=torch.long)
    per_tok[:, 5:] = 1
    assert model.expert_load_by_domain(per_tok, 2)[0].sum(-1).tolist() == [30, 30]


def test_validate_rejects_bad_values():
    for kw, msg in [
        ({"top_k": 9}, "top_k"),
        ({"d_model": 30}, "divisible"),
        ({"balance": "x"}, "balance"),
        ({"granularity": 3}, "granularity"),
        ({"kernel_impl": "cuda"}, "kernel_impl"),
    ]:
        with pytest.raises(ValueError, match=msg):
            dataclasses.replace(TINY, **kw).validate()
    MoEConfig().validate()


def test_bf16_autocast_and_bf16_weights_train():
    """The hand-written backward must see one dtype under autocast (it runs outside autocast)."""
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    losses = {}
    for impl in ("reference", "grouped"):
        model = tiny(kernel_impl=impl, n_shared_experts=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, ids)
        out.loss.backward()
        grad = model.blocks[0].ffn.experts.w_gate_up.grad
        assert grad.dtype == torch.float32 and grad.abs().sum() > 0
        losses[impl] = out.loss.item()
    assert abs(losses["reference"] - losses["grouped"]) < 2e-2
    model = tiny().to(torch.bfloat16)
    out = model(ids, ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "d_model,init_std,want", [(64, None, 0.0625), (256, None, 0.03125), (64, 0.02, 0.02)]
)
def test_init_std_follows_width_unless_set(d_model, init_std, want):
    """Default init is 0.5/sqrt(d_model) (a fixed 0.02 undertrains narrow models); an explicit value wins.
    Residual-branch outputs are scaled down by sqrt(2 * n_layers) on top of it."""
    model = tiny(d_model=d_model, init_std=init_std)
    assert model.cfg.weight_init_std == pytest.approx(want)
    assert model.embed.weight.std().item() == pytest.approx(want, rel=0.05)
    w_down = dict(model.named_parameters())["blocks.0.ffn.experts.w_down"]
    assert w_down.std().item() == pytest.approx(want / 2.0, rel=0.1)  # n_layers 2


def test_init_std_must_be_positive():
    with pytest.raises(ValueError, match="init_std"):
        dataclasses.replace(TINY, init_std=0.0).validate()
