"""Decoder-only MoE language model (nanoGPT-sized readability, dropless MoE FFNs).

Training-loop contract:
- ``out = model(input_ids, targets)``; backprop ``out.loss`` (= lm_loss + aux_loss + z_loss, the aux
  terms already multiplied by their coefficients and averaged over MoE layers). With targets the LM
  head and its loss run fused over row chunks (``lm_loss.linear_cross_entropy``) and ``out.logits``
  is None; ``return_logits=True`` materialises them and takes the plain cross-entropy instead.
- After ``optimizer.step()`` call ``model.update_router_biases()`` (no-op unless balance="aux_free").
- Call ``model.begin_global_batch(micro_batches)`` once before the first micro-batch of every
  optimizer step: with ``aux_loss_scope="global"`` it takes the expert frequencies of the whole step
  (summed over DP ranks when torch.distributed is up) that every micro-batch's aux loss then uses.
- ``model.expert_load()`` [n_moe_layers, E] counts of the last forward; ``expert_load_by_domain``
  splits them by a per-sequence or per-token domain id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moemix.moe_model.config import MoEConfig
from moemix.moe_model.layers import CausalSelfAttention, RMSNorm, SwiGLU
from moemix.moe_model.lm_loss import linear_cross_entropy
from moemix.moe_model.moe import MoEBlock


@dataclass
class MoEOutput:
    logits: Tensor | None  # [B, T, V]; None when the loss was computed fused (targets, no return_logits)
    loss: Tensor | None  # lm_loss + aux_loss + z_loss (None without targets)
    lm_loss: Tensor | None  # mean cross-entropy over target tokens (ignore_index=-100)
    aux_loss: Tensor  # weighted balance loss (0 when unused)
    z_loss: Tensor  # weighted router z-loss (0 when unused)


# a pytree node, so FSDP2 finds the output tensors of the root module and hooks its backward on them
torch.utils._pytree.register_dataclass(MoEOutput)


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(
            cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.max_seq_len, cfg.rope_theta
        )
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn: MoEBlock | SwiGLU = MoEBlock(cfg) if moe else SwiGLU(cfg.d_model, cfg.d_dense_hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = x + self.attn(self.attn_norm(x))
        if isinstance(self.ffn, MoEBlock):
            y, aux, z = self.ffn(self.ffn_norm(x))
            return x + y, aux, z
        return x + self.ffn(self.ffn_norm(x)), None, None


class MoETransformer(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, moe=i >= cfg.n_dense_layers) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._init_weights()

    @property
    def moe_blocks(self) -> list[MoEBlock]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoEBlock)]

    def _init_weights(self) -> None:
        std = self.cfg.weight_init_std
        # residual-branch outputs scaled down with depth (GPT-2) so the residual stream variance stays O(1)
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue  # norms are ones
            is_out = name.endswith(("attn.out.weight", "down.weight", "w_down"))
            nn.init.normal_(p, mean=0.0, std=out_std if is_out else std)

    def forward(
        self, input_ids: Tensor, targets: Tensor | None = None, *, return_logits: bool = False
    ) -> MoEOutput:
        cfg = self.cfg
        if input_ids.shape[1] > cfg.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_seq_len={cfg.max_seq_len}")
        x = self.embed(input_ids)
        aux_terms, z_terms = [], []
        for block in self.blocks:
            x, aux, z = block(x)
            if aux is not None:
                aux_terms.append(aux)
                z_terms.append(z)
        x = self.norm(x)
        zero = x.new_zeros((), dtype=torch.float32)
        aux_loss = (
            cfg.aux_loss_coef * torch.stack(aux_terms).mean() if aux_terms and cfg.balance == "aux" else zero
        )
        z_loss = cfg.z_loss_coef * torch.stack(z_terms).mean() if z_terms and cfg.z_loss_coef > 0 else zero
        logits = lm_loss = loss = None
        if targets is None or return_logits:
            logits = self.lm_head(x)
        if targets is not None:
            if logits is None:
                lm_loss = linear_cross_entropy(x, self.lm_head.weight, targets)
            else:
                lm_loss = F.cross_entropy(
                    logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
                )
            loss = lm_loss + aux_loss + z_loss
        return MoEOutput(logits=logits, loss=loss, lm_loss=lm_loss, aux_loss=aux_loss, z_loss=z_loss)

    # ---- balancing ----
    def begin_global_batch(self, micro_batches: Sequence[Tensor] = ()) -> None:
        """Start a new optimizer step for ``aux_loss_scope="global"`` (call before its first micro-batch).

        Given the step's micro-batches, their routing is counted first in a no-grad pass, so every
        micro-batch's aux loss uses the expert frequencies of the whole step: the step then equals one
        forward over the whole batch, at the price of that extra forward. Without them, micro-batch m sees
        the counts of micro-batches 1..m."""
        for m in self.moe_blocks:
            m.reset_global()
        if not (micro_batches and self.cfg.balance == "aux" and self.cfg.aux_loss_scope == "global"):
            return
        for m in self.moe_blocks:
            m.counting_only = True
        try:
            with torch.no_grad():
                for x in micro_batches:
                    self(x)
        finally:
            for m in self.moe_blocks:
                m.counting_only = False
        for m in self.moe_blocks:
            m.freeze_global()

    def update_router_biases(self) -> None:
        """Aux-loss-free balancing step; call after ``optimizer.step()``. No-op unless balance="aux_free"."""
        if self.cfg.balance != "aux_free":
            return
        for m in self.moe_blocks:
            m.update_bias()

    # ---- statistics ----
    def expert_load(self) -> Tensor:
        """[n_moe_layers, n_experts] routed (token, slot) counts of the last forward (int64, CPU)."""
        if not self.moe_blocks:
            return torch.zeros(0, self.cfg.n_routed, dtype=torch.long)
        return torch.stack([m.last_counts for m in self.moe_blocks]).cpu()

    @torch.no_grad()
    def expert_load_by_domain(self, domain_ids: Tensor, n_domains: int) -> Tensor:
        """[n_moe_layers, n_domains, n_experts] counts of the last forward split by domain.

        domain_ids: [B] (one domain per sequence) or [B, T] (per token; negative ids are skipped).
        """
        e = self.cfg.n_routed
        out = torch.zeros(len(self.moe_blocks), n_domains, e, dtype=torch.long)
        for i, m in enumerate(self.moe_blocks):
            if m.last_topk_idx is None:
                raise RuntimeError("expert_load_by_domain needs a forward pass first")
            idx = m.last_topk_idx.cpu()  # [B, T, k]
            dom = domain_ids.cpu().long()
            if dom.dim() == 1:
                dom = dom[:, None].expand(idx.shape[0], idx.shape[1])
            if dom.shape != idx.shape[:2]:
                raise ValueError(
                    f"domain_ids shape {tuple(domain_ids.shape)} does not match batch {tuple(idx.shape[:2])}"
                )
            dom = dom[..., None].expand_as(idx)
            keep = dom >= 0
            flat = dom[keep] * e + idx[keep]
            out[i] = torch.bincount(flat, minlength=n_domains * e).view(n_domains, e)
        return out

    # ---- size / cost ----
    def _expert_params_per_layer(self) -> tuple[int, int]:
        per_expert = 3 * self.cfg.d_model * self.cfg.d_routed
        return per_expert * self.cfg.n_routed, per_expert * self.cfg.k_routed

    def num_params(self, active_only: bool = False) -> int:
        """Parameter count (tied embeddings once). ``active_only``: only top-k of each layer's routed
        experts count (shared experts, attention, embeddings and router always do)."""
        total = sum(p.numel() for p in self.parameters())
        if not active_only:
            return total
        all_e, act_e = self._expert_params_per_layer()
        return total - self.cfg.n_moe_layers * (all_e - act_e)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward = 3x forward) per token.

        6 x active matmul parameters (everything except the embedding lookup and norms; the LM head
        counts even when tied) + attention scores/values 12 * n_layers * d_model * seq_len (PaLM
        convention, no causal halving).
        """
        cfg = self.cfg
        non_matmul = self.embed.weight.numel() + sum(p.numel() for p in self.parameters() if p.dim() == 1)
        matmul = self.num_params(active_only=True) - non_matmul + cfg.vocab_size * cfg.d_model
        return 6.0 * matmul + 12.0 * cfg.n_layers * cfg.d_model * seq_len
