"""Expert parallelism: each rank of an ``ep`` group holds ``E / ep`` of a layer's routed experts.

Tokens are routed on the rank that holds them; the (token, slot) assignments are sorted by expert, sent
to the rank that owns each expert with one variable-size all-to-all (dispatch), run through the local
experts with the same ``moe_ffn`` kernels as a single process, and sent back with the reverse all-to-all
(combine); the routing weights are applied on the source rank, so their gradient never leaves it.
Experts ``[r * E/ep, (r + 1) * E/ep)`` live on ep rank ``r``.

Every rank of the group must call the forward (and backward) the same number of times: the all-to-alls
are collective, like FSDP's all-gathers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from moemix.kernels import moe_ffn
from moemix.kernels.dispatch import make_dispatch


@dataclass(frozen=True)
class ExpertShard:
    """Where one rank's experts sit: ``size`` ranks of ``group`` share the ``n_experts`` experts."""

    group: Any  # the ep ProcessGroup
    size: int
    rank: int  # this rank's index inside the ep group
    n_experts: int  # the layer's experts over the whole group

    @property
    def local_experts(self) -> int:
        return self.n_experts // self.size

    @property
    def first_expert(self) -> int:
        return self.rank * self.local_experts


class _AllToAll(torch.autograd.Function):
    """Variable-size ``all_to_all_single`` whose backward is the reverse exchange of the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> Tensor:
        ctx.splits, ctx.group = (in_splits, out_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        back_out, back_in = ctx.splits
        out = grad.new_empty((sum(back_out), *grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), back_out, back_in, group=ctx.group)
        return out, None, None, None


def expert_parallel_ffn(
    x: Tensor,
    topk_idx: Tensor,
    topk_weight: Tensor,
    w_gate_up: Tensor,
    w_down: Tensor,
    shard: ExpertShard,
    impl: str = "auto",
) -> Tensor:
    """``moe_ffn`` over experts spread across ``shard.group``: x [T, d], topk_idx [T, k] (global expert
    ids), w_gate_up [E/ep, d, 2f] and w_down [E/ep, f, d] (this rank's experts). Returns [T, d]."""
    t, k = topk_idx.shape
    d = x.shape[1]
    el = shard.local_experts
    plan = make_dispatch(topk_idx, shard.n_experts)
    send = x[plan.token]  # [T*k, d], rows grouped by expert, so by owning rank
    send_counts = plan.counts.view(shard.size, el)  # [dest rank, its local expert]
    recv_counts = torch.empty_like(send_counts)  # [source rank, my local expert]
    dist.all_to_all_single(recv_counts, send_counts.contiguous(), group=shard.group)
    in_splits = send_counts.sum(1).tolist()
    out_splits = recv_counts.sum(1).tolist()
    recv = _AllToAll.apply(send, out_splits, in_splits, shard.group)
    # rows arrive as (source rank, local expert) blocks: one slot per row, weight 1 (applied at home)
    local_ids = torch.arange(el, device=x.device).repeat(shard.size)
    row_expert = torch.repeat_interleave(local_ids, recv_counts.reshape(-1)).unsqueeze(1)
    if recv.shape[0]:
        ones = torch.ones(row_expert.shape, dtype=x.dtype, device=x.device)
        y = moe_ffn(recv, row_expert, ones, w_gate_up, w_down, impl=impl)
    else:  # nothing routed here this step: keep the weights in the graph so their gradient is 0
        y = recv + 0 * (w_gate_up.sum() + w_down.sum())
    back = _AllToAll.apply(y, in_splits, out_splits, shard.group)  # [T*k, d] in dispatch order
    per_slot = back.new_empty(back.shape).index_copy(0, plan.order, back).view(t, k, d)
    return (per_slot * topk_weight.to(per_slot.dtype).unsqueeze(-1)).sum(1)
