"""One MoE feed-forward block: router -> dispatcher/kernels -> experts (+ shared experts).

The block also keeps the expert-load bookkeeping the training loop logs and the balancers need:
``last_counts`` (this forward), ``global_counts`` (since ``reset_global``; global-batch aux loss),
``bias_counts`` (since the last bias update) and ``last_topk_idx`` (per-domain aggregation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moemix.moe_model.balance import (
    all_reduce_sum,
    bias_update,
    expert_counts,
    router_z_loss,
    switch_aux_loss,
)
from moemix.moe_model.config import MoEConfig
from moemix.moe_model.experts import RoutedExperts
from moemix.moe_model.layers import SwiGLU
from moemix.moe_model.router import TopKRouter


class MoEBlock(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        e = cfg.n_routed
        self.router = TopKRouter(
            cfg.d_model,
            e,
            cfg.k_routed,
            score=cfg.router_score,
            renorm=cfg.router_renorm,
            use_bias=cfg.balance == "aux_free",
        )
        self.experts = RoutedExperts(e, cfg.d_model, cfg.d_routed, impl=cfg.kernel_impl)
        self.shared = (
            SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.d_routed) if cfg.n_shared_experts else None
        )
        self.register_buffer("last_counts", torch.zeros(e, dtype=torch.long), persistent=False)
        self.register_buffer("global_counts", torch.zeros(e, dtype=torch.long), persistent=False)
        self.register_buffer("bias_counts", torch.zeros(e, dtype=torch.long), persistent=False)
        self.last_topk_idx: Tensor | None = None
        # set by MoETransformer.begin_global_batch: a no-grad pass that only counts the step's routing,
        # then counts frozen for the step's micro-batches
        self.counting_only = False
        self.global_frozen = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, d] -> (out [B, T, d], unweighted aux loss, unweighted z-loss)."""
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        r = self.router(flat)
        out = self.experts(flat, r.topk_idx, r.topk_weight)
        if self.shared is not None:
            out = out + self.shared(flat)

        learning = self.training and torch.is_grad_enabled()  # inference must not move balance stats
        if self.counting_only:  # begin_global_batch's pass: count the routing (the output feeds later layers)
            self.global_counts += expert_counts(r.topk_idx, self.cfg.n_routed)
            zero = out.new_zeros((), dtype=torch.float32)
            return out.view(b, t, d), zero, zero
        with torch.no_grad():
            counts = expert_counts(r.topk_idx, self.cfg.n_routed)
            self.last_counts.copy_(counts)
            self.last_topk_idx = r.topk_idx.detach().view(b, t, -1)
            if learning and self.cfg.balance == "aux_free":
                self.bias_counts += counts
            if learning and self.cfg.balance == "aux" and self.cfg.aux_loss_scope == "global":
                if not self.global_frozen:
                    self.global_counts += all_reduce_sum(counts.clone())
                counts = self.global_counts.clone()

        zero = out.new_zeros((), dtype=torch.float32)
        aux = switch_aux_loss(r.probs, counts) if self.cfg.balance == "aux" else zero
        z = router_z_loss(r.logits) if self.cfg.z_loss_coef > 0 else zero
        return out.view(b, t, d), aux, z

    def reset_global(self) -> None:
        self.global_counts.zero_()
        self.global_frozen = False

    def freeze_global(self) -> None:
        """The counting pass is over: sum its counts over ranks and keep them for the step."""
        all_reduce_sum(self.global_counts)
        self.global_frozen = True

    @torch.no_grad()
    def update_bias(self) -> None:
        load = all_reduce_sum(self.bias_counts.clone())
        if load.sum() > 0:
            bias_update(self.router.expert_bias, load, self.cfg.bias_update_rate)
        self.bias_counts.zero_()
