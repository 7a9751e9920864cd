"""Load balancing: aux-loss-free bias evens a skewed router; global-batch vs micro-batch aux loss."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch

from moemix.moe_model import MoEConfig, MoETransformer
from moemix.moe_model.balance import switch_aux_loss
from moemix.moe_model.moe import MoEBlock

D, E, K = 16, 8, 2


def max_mean(load: torch.Tensor) -> float:
    load = load.float()
    return (load.max() / load.mean()).item()


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_aux_free_bias_evens_skewed_router(score):
    torch.manual_seed(0)
    cfg = MoEConfig(
        d_model=D,
        n_experts=E,
        top_k=K,
        d_expert=8,
        balance="aux_free",
        router_score=score,
        bias_update_rate=0.01 if score == "sigmoid" else 0.002,
        z_loss_coef=0.0,
    )
    block = MoEBlock(cfg).train()
    offset = torch.zeros(D)
    offset[0] = 3.0
    with torch.no_grad():
        block.router.gate.weight.normal_(std=0.3)
        block.router.gate.weight[:2, 0] = 1.5  # experts 0 and 1 win for almost every token
    gen = torch.Generator().manual_seed(1)
    loads = []
    for _ in range(300):
        x = torch.randn(1, 256, D, generator=gen) + offset
        block(x)
        loads.append(block.last_counts.clone())
        block.update_bias()
    before, after = max_mean(loads[0]), max_mean(torch.stack(loads[-50:]).sum(0))
    assert before > 2.5, before
    assert after < 1.25, (before, after)
    assert block.router.expert_bias[:2].max() < block.router.expert_bias[2:].min()  # hot experts pushed down
    # the bias only selects: weights still come from the unbiased scores (renormalised)
    x = torch.randn(64, D, generator=gen) + offset
    r = block.router(x)
    with torch.no_grad():
        logits = x @ block.router.gate.weight.T
        scores = torch.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
        bias = block.router.expert_bias
    # the learned bias really does change the choice for some tokens (else this check would be vacuous)
    assert torch.equal(r.topk_idx.sort(-1).values, torch.topk(scores + bias, K, -1).indices.sort(-1).values)
    assert not torch.equal(r.topk_idx.sort(-1).values, torch.topk(scores, K, -1).indices.sort(-1).values)
    chosen = scores.gather(-1, r.topk_idx)
    torch.testing.assert_close(r.topk_weight, chosen / chosen.sum(-1, keepdim=True))


def test_bias_untouched_without_aux_free_and_in_eval():
    torch.manual_seed(0)
    model = MoETransformer(MoEConfig(vocab_size=32, d_model=16, n_heads=2, d_expert=16, balance="aux"))
    model(torch.randint(0, 32, (2, 8)))
    model.update_router_biases()
    assert all(m.router.expert_bias.abs().sum() == 0 for m in model.moe_blocks)
    model = MoETransformer(MoEConfig(vocab_size=32, d_model=16, n_heads=2, d_expert=16, balance="aux_free"))
    with torch.no_grad():
        model(torch.randint(0, 32, (2, 8)))  # inference: must not count towards the load
    model.update_router_biases()
    assert all(m.router.expert_bias.abs().sum() == 0 for m in model.moe_blocks)
    model(torch.randint(0, 32, (2, 8)))
    model.update_router_biases()
    assert all(m.router.expert_bias.abs().sum() > 0 for m in model.moe_blocks)


def opposite_micro_batches() -> tuple[torch.Tensor, torch.Tensor]:
    """Two micro-batches: the first prefers experts 0-3, the second 4-7 (balanced only together)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1, 64, D, generator=gen)
    b = torch.randn(1, 64, D, generator=gen)
    a[..., 0] += 4.0
    b[..., 0] -= 4.0
    return a, b


def skewed_block(scope: str) -> MoEBlock:
    torch.manual_seed(0)
    cfg = MoEConfig(d_model=D, n_experts=E, top_k=K, d_expert=8, balance="aux", aux_loss_scope=scope)
    block = MoEBlock(cfg).train()
    with torch.no_grad():
        block.router.gate.weight.normal_(std=0.1)
        block.router.gate.weight[:4, 0] = 1.0
        block.router.gate.weight[4:, 0] = -1.0
    return block


def test_global_aux_loss_differs_from_micro_on_opposite_micro_batches():
    a, b = opposite_micro_batches()
    micro, glob = skewed_block("micro"), skewed_block("global")
    glob.reset_global()
    m_a, m_b = micro(a)[1], micro(b)[1]
    g_a, g_b = glob(a)[1], glob(b)[1]
    # each micro-batch alone is badly imbalanced: its loss is ~2 (= E * (1/4 of experts) * ...)
    assert m_a > 1.5 and m_b > 1.5, (m_a, m_b)
    # the first micro-batch of a global batch has seen only itself, so it equals the micro loss
    torch.testing.assert_close(g_a, m_a)
    # after both, the accumulated frequencies are near uniform and the loss drops towards 1
    assert g_b < 1.2 and g_b < m_b - 0.4, (g_b, m_b)
    counts = glob.global_counts.clone()
    assert max_mean(counts) < 1.3
    # gradients differ too: global penalises nothing in particular, micro pushes tokens off 4..7
    grad_micro = torch.autograd.grad(micro(b)[1], micro.router.gate.weight)[0]
    glob.reset_global()
    glob(a)
    grad_glob = torch.autograd.grad(glob(b)[1], glob.router.gate.weight)[0]
    assert (grad_micro - grad_glob).abs().max() > 1e-3
    # begin_global_batch resets: a new global batch starts from zero counts
    glob.reset_global()
    torch.testing.assert_close(glob(a)[1], m_a)


def test_model_begin_global_batch_and_exact_formula():
    cfg = MoEConfig(
        vocab_size=32,
        d_model=16,
        n_heads=2,
        d_expert=16,
        balance="aux",
        aux_loss_scope="global",
        aux_loss_coef=1.0,
        z_loss_coef=0.0,
        n_layers=1,
    )
    torch.manual_seed(0)
    model = MoETransformer(cfg).train()
    x1, x2 = torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))
    model.begin_global_batch()
    model(x1)
    c1 = model.expert_load()[0]
    out2 = model(x2)
    c2 = model.expert_load()[0]
    block = model.moe_blocks[0]
    torch.testing.assert_close(block.global_counts, c1 + c2)
    # recompute the expected loss from the router probabilities of micro-batch 2
    h = model.blocks[0]
    with torch.no_grad():
        xx = model.embed(x2)
        xx = xx + h.attn(h.attn_norm(xx))
        probs = block.router(h.ffn_norm(xx).reshape(-1, 16)).probs
    torch.testing.assert_close(out2.aux_loss, switch_aux_loss(probs, c1 + c2))
    model.begin_global_batch()
    assert block.global_counts.sum() == 0


def _dp_worker(rank: int, port: int, result_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        a, b = opposite_micro_batches()
        block = skewed_block("global")
        block.reset_global()
        loss = block(a if rank == 0 else b)[1]
        torch.save({"loss": loss.detach(), "counts": block.global_counts.clone()}, f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_aux_loss_all_reduces_across_data_parallel_ranks(tmp_path):
    """Two gloo ranks with opposite skews: with scope=global both see the balanced global counts."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_dp_worker, args=(port, str(tmp_path / "r")), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "r.0"), torch.load(tmp_path / "r.1")
    assert torch.equal(r0["counts"], r1["counts"]) and max_mean(r0["counts"]) < 1.3
    a, _ = opposite_micro_batches()
    micro = skewed_block("micro")
    assert r0["loss"] < micro(a)[1] - 0.4


def test_z_loss_and_coefficients():
    base = MoEConfig(vocab_size=32, d_model=16, n_heads=2, d_expert=16, n_layers=2)
    ids = torch.randint(0, 32, (2, 8))
    losses = {}
    for coef in (0.0, 0.5):
        torch.manual_seed(0)
        model = MoETransformer(dataclasses.replace(base, z_loss_coef=coef, aux_loss_coef=coef))
        losses[coef] = model(ids, ids)
    assert losses[0.0].z_loss == 0 and losses[0.0].aux_loss == 0
    out = losses[0.5]
    assert out.z_loss > 0 and out.aux_loss > 0.5 * 0.9  # Switch loss >= 1 (x coef 0.5)
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss + out.z_loss)
