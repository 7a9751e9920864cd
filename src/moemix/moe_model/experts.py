"""Routed experts: stacked SwiGLU weights run through ``moemix.kernels.moe_ffn``.

Under expert parallelism (``shard_experts``) the module keeps only its ep rank's slice of the stack
and exchanges tokens with the other ranks (``moemix.moe_model.expert_parallel``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moemix.kernels import moe_ffn
from moemix.moe_model.expert_parallel import ExpertShard, expert_parallel_ffn


def _local(w: Tensor) -> Tensor:
    # a training job may hold the slice as a DTensor view of the whole stack (for its checkpoints)
    return w.to_local() if hasattr(w, "to_local") else w


class RoutedExperts(nn.Module):
    def __init__(self, n_experts: int, d_model: int, d_hidden: int, impl: str = "auto"):
        super().__init__()
        self.impl = impl
        self.n_experts = n_experts
        self.shard: ExpertShard | None = None
        # [E, d, 2f] with gate columns first then up; [E, f, d]. Row-major per expert so x @ W works
        # without transposes in every kernel.
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, d_model, 2 * d_hidden))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_hidden, d_model))

    def shard_experts(self, group, size: int, rank: int) -> None:
        """Keep experts ``[rank * E/size, (rank + 1) * E/size)`` (call after init, before the optimizer
        is built: the parameters are replaced)."""
        if self.n_experts % size:
            raise ValueError(f"expert parallelism: {self.n_experts} experts do not split over ep {size}")
        shard = ExpertShard(group=group, size=size, rank=rank, n_experts=self.n_experts)
        lo, hi = shard.first_expert, shard.first_expert + shard.local_experts
        self.w_gate_up = nn.Parameter(self.w_gate_up.detach()[lo:hi].clone())
        self.w_down = nn.Parameter(self.w_down.detach()[lo:hi].clone())
        self.shard = shard

    def forward(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
        # under autocast x may be bf16 while the master weights are fp32: compute in x's dtype
        w1, w2 = _local(self.w_gate_up).to(x.dtype), _local(self.w_down).to(x.dtype)
        if self.shard is not None:
            return expert_parallel_ffn(x, topk_idx, topk_weight, w1, w2, self.shard, impl=self.impl)
        return moe_ffn(x, topk_idx, topk_weight, w1, w2, impl=self.impl)
