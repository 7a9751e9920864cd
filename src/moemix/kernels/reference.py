"""The oracle: a per-expert Python loop (HF Mixtral-style), differentiated by plain autograd.

Every expert gathers its tokens, runs SwiGLU and scatter-adds the gate-weighted result. It is
kept obviously correct (not fast) so the fused paths can be tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moe_ffn_reference(
    x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> Tensor:
    n_experts, _, two_f = w_gate_up.shape
    f = two_f // 2
    out = torch.zeros_like(x)
    for e in range(n_experts):
        tok, slot = torch.where(topk_idx == e)
        if tok.numel() == 0:
            continue
        h = x[tok] @ w_gate_up[e]
        a = F.silu(h[:, :f]) * h[:, f:]
        y = (a @ w_down[e]) * topk_weight[tok, slot, None].to(x.dtype)
        out = out.index_add(0, tok, y)
    return out
