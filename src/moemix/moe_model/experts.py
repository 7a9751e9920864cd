"""Routed experts: stacked SwiGLU weights run through ``moemix.kernels.moe_ffn``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moemix.kernels import moe_ffn


class RoutedExperts(nn.Module):
    def __init__(self, n_experts: int, d_model: int, d_hidden: int, impl: str = "auto"):
        super().__init__()
        self.impl = impl
        # [E, d, 2f] with gate columns first then up; [E, f, d]. Row-major per expert so x @ W works
        # without transposes in every kernel.
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, d_model, 2 * d_hidden))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_hidden, d_model))

    def forward(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
        # under autocast x may be bf16 while the master weights are fp32: compute in x's dtype
        w1, w2 = self.w_gate_up.to(x.dtype), self.w_down.to(x.dtype)
        return moe_ffn(x, topk_idx, topk_weight, w1, w2, impl=self.impl)
