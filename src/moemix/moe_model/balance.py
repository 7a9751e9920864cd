"""Load-balancing terms: Switch auxiliary loss, router z-loss, aux-loss-free bias update.

Global-batch aux loss (Qwen, "Demons in the Detail"): the expert frequencies ``f_e`` are the
counts accumulated over every micro-batch of the current global batch (and summed over data-parallel
ranks when torch.distributed is initialised), while the router probabilities ``P_e`` stay local and
differentiable. Micro-batches are processed in order, so micro-batch m sees the counts of
micro-batches 1..m; with a single micro-batch per step it is exact across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over data-parallel ranks (in place) when a process group exists."""
    if distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def expert_counts(topk_idx: Tensor, n_experts: int) -> Tensor:
    return torch.bincount(topk_idx.reshape(-1), minlength=n_experts)


def switch_aux_loss(probs: Tensor, counts: Tensor) -> Tensor:
    """``E * Σ_e f_e P_e``: 1 at perfect balance, up to E when everything goes to one expert.

    probs [N, E] (rows sum to 1); counts [E] routed (token, slot) pairs, treated as constants.
    """
    n_experts = probs.shape[-1]
    freq = counts.float() / counts.sum().clamp_min(1)
    return n_experts * (freq.detach() * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE z-loss: keeps router logits small so the softmax stays well-conditioned."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def bias_update(bias: Tensor, load: Tensor, rate: float) -> None:
    """DeepSeek-V3: raise the bias of under-loaded experts, lower over-loaded ones, by ``rate``."""
    load = load.float()
    bias.add_(rate * torch.sign(load.mean() - load))
