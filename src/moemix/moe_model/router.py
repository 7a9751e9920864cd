"""Top-k token-choice router.

Selection and weighting are deliberately separate: with aux-loss-free balancing (DeepSeek-V3) the
per-expert ``expert_bias`` shifts which experts are *chosen*, but the gate weights come from the
unbiased scores, so the bias steers load without distorting the mixture itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class RouterOutput:
    logits: Tensor  # [N, E] fp32 raw router logits (for the z-loss)
    probs: Tensor  # [N, E] per-token score distribution (sums to 1) for the Switch aux loss
    topk_idx: Tensor  # [N, k] int64
    topk_weight: Tensor  # [N, k] fp32 gate weights


class TopKRouter(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        score: str = "softmax",
        renorm: bool = True,
        use_bias: bool = False,
    ):
        super().__init__()
        self.n_experts, self.top_k, self.score, self.renorm, self.use_bias = (
            n_experts,
            top_k,
            score,
            renorm,
            use_bias,
        )
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        # a buffer, not a parameter: it is moved by the load-based update rule, never by gradients
        self.register_buffer("expert_bias", torch.zeros(n_experts))

    def forward(self, x: Tensor) -> RouterOutput:
        logits = self.gate(x).float()
        if self.score == "softmax":
            scores = torch.softmax(logits, dim=-1)
            probs = scores
        else:
            scores = torch.sigmoid(logits)
            probs = scores / scores.sum(-1, keepdim=True)
        select = scores + self.expert_bias if self.use_bias else scores
        topk_idx = torch.topk(select, self.top_k, dim=-1).indices
        weight = scores.gather(-1, topk_idx)
        if self.renorm:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        return RouterOutput(logits=logits, probs=probs, topk_idx=topk_idx, topk_weight=weight)
