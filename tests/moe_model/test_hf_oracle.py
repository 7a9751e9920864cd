"""Outside oracle: our MoE block vs transformers' Mixtral / OLMoE / DeepSeek-V3 sparse MoE blocks.

Same weights in, same outputs and the same gradients (input, router, every expert weight, shared
expert) out. The three cover softmax+renorm, softmax without renorm, and sigmoid scores with a
selection-only bias (DeepSeek-V3's e_score_correction_bias = our aux-loss-free expert_bias) plus a
shared expert.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from moemix.moe_model import MoEConfig  # noqa: E402
from moemix.moe_model.moe import MoEBlock  # noqa: E402

D, F, E, K, T = 32, 16, 8, 2, 45


def hf_block(kind: str):
    torch.manual_seed(0)
    if kind == "mixtral":
        from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralSparseMoeBlock

        hf_cfg = MixtralConfig(
            hidden_size=D,
            intermediate_size=F,
            num_local_experts=E,
            num_experts_per_tok=K,
            router_jitter_noise=0.0,
        )
        hf_cfg._experts_implementation = "eager"
        block = MixtralSparseMoeBlock(hf_cfg)
        ours = dict(router_score="softmax", router_renorm=True, balance="none")
    elif kind == "olmoe":
        from transformers.models.olmoe.modeling_olmoe import OlmoeConfig, OlmoeSparseMoeBlock

        hf_cfg = OlmoeConfig(
            hidden_size=D, intermediate_size=F, num_experts=E, num_experts_per_tok=K, norm_topk_prob=False
        )
        hf_cfg._experts_implementation = "eager"
        block = OlmoeSparseMoeBlock(hf_cfg)
        ours = dict(router_score="softmax", router_renorm=False, balance="none")
    else:
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Config, DeepseekV3MoE

        hf_cfg = DeepseekV3Config(
            hidden_size=D,
            moe_intermediate_size=F,
            n_routed_experts=E,
            num_experts_per_tok=K,
            n_group=1,
            topk_group=1,
            n_shared_experts=1,
            routed_scaling_factor=1.0,
            norm_topk_prob=True,
        )
        hf_cfg._experts_implementation = "eager"
        block = DeepseekV3MoE(hf_cfg)
        ours = dict(router_score="sigmoid", router_renorm=True, balance="aux_free", n_shared_experts=1)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    if kind == "deepseek":
        # a bias large enough to change which experts win, so selection-vs-weight separation is tested
        block.gate.e_score_correction_bias.copy_(torch.randn(E) * 0.3)
    return block.float(), ours


def load_into_ours(hf, ours_kw: dict, impl: str) -> MoEBlock:
    cfg = MoEConfig(d_model=D, n_experts=E, top_k=K, d_expert=F, z_loss_coef=0.0, kernel_impl=impl, **ours_kw)
    ours = MoEBlock(cfg)
    with torch.no_grad():
        ours.router.gate.weight.copy_(hf.gate.weight)
        ours.experts.w_gate_up.copy_(hf.experts.gate_up_proj.transpose(1, 2))  # HF: [E, 2f, d]
        ours.experts.w_down.copy_(hf.experts.down_proj.transpose(1, 2))  # HF: [E, d, f]
        if hasattr(hf.gate, "e_score_correction_bias"):
            ours.router.expert_bias.copy_(hf.gate.e_score_correction_bias)
        if ours.shared is not None:
            s = hf.shared_experts
            ours.shared.gate_up.weight.copy_(torch.cat([s.gate_proj.weight, s.up_proj.weight]))
            ours.shared.down.weight.copy_(s.down_proj.weight)
    return ours


@pytest.mark.parametrize("impl", ["reference", "grouped"])
@pytest.mark.parametrize("kind", ["mixtral", "olmoe", "deepseek"])
def test_block_matches_transformers(kind, impl):
    hf, kw = hf_block(kind)
    ours = load_into_ours(hf, kw, impl)
    x = torch.randn(3, T // 3, D, generator=torch.Generator().manual_seed(1))
    gout = torch.randn(3, T // 3, D, generator=torch.Generator().manual_seed(2))

    xa = x.clone().requires_grad_()
    ya = hf(xa)
    ya = ya[0] if isinstance(ya, tuple) else ya
    (ya * gout).sum().backward()
    xb = x.clone().requires_grad_()
    yb, _, _ = ours(xb)
    (yb * gout).sum().backward()

    assert yb.abs().max() > 0.1  # a real signal, not two zero tensors
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.router.gate.weight.grad, hf.gate.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ours.experts.w_gate_up.grad, hf.experts.gate_up_proj.grad.transpose(1, 2), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        ours.experts.w_down.grad, hf.experts.down_proj.grad.transpose(1, 2), rtol=1e-5, atol=1e-5
    )
    if ours.shared is not None:
        s = hf.shared_experts
        torch.testing.assert_close(
            ours.shared.gate_up.weight.grad,
            torch.cat([s.gate_proj.weight.grad, s.up_proj.weight.grad]),
            rtol=1e-5,
            atol=1e-5,
        )


def test_deepseek_bias_changes_selection_not_weights():
    """Sanity of the oracle setup: the bias really flips some choices (else the test above is weak)."""
    hf, kw = hf_block("deepseek")
    ours = load_into_ours(hf, kw, "grouped")
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(1))
    with_bias = ours.router(x)
    ours.router.expert_bias.zero_()
    without = ours.router(x)
    assert not torch.equal(with_bias.topk_idx.sort(-1).values, without.topk_idx.sort(-1).values)


def test_rope_matches_transformers():
    from transformers.models.mixtral.modeling_mixtral import apply_rotary_pos_emb

    from moemix.moe_model.layers import apply_rope, rope_tables

    hd, t = 16, 10
    cos, sin = rope_tables(hd, 32, 10000.0)
    q, k = torch.randn(2, 3, t, hd), torch.randn(2, 3, t, hd)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    emb = torch.outer(torch.arange(t).float(), inv).repeat(1, 2)
    qh, kh = apply_rotary_pos_emb(q, k, emb.cos()[None], emb.sin()[None])
    torch.testing.assert_close(apply_rope(q, cos, sin), qh)
    torch.testing.assert_close(apply_rope(k, cos, sin), kh)
