"""A tiny dense LM with the MoETransformer interface, so loop tests do not depend on the MoE model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moemix.moe_model import MoEOutput


@dataclass
class StubConfig:
    vocab_size: int = 64
    max_seq_len: int = 128
    d_model: int = 32


class StubLM(torch.nn.Module):
    def __init__(self, cfg: StubConfig):
        super().__init__()
        self.emb = torch.nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.mix = torch.nn.Linear(2 * cfg.d_model, cfg.d_model)
        self.out = torch.nn.Linear(cfg.d_model, cfg.vocab_size)
        self.register_buffer("router_bias", torch.zeros(4))
        self.bias_updates = 0

    def forward(self, input_ids, targets=None):
        h = self.emb(input_ids)
        prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
        logits = self.out(torch.tanh(self.mix(torch.cat([h, prev], -1))))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        zero = torch.zeros(())
        return MoEOutput(logits=logits, loss=loss, lm_loss=loss, aux_loss=zero, z_loss=zero)

    def begin_global_batch(self, micro_batches=()):
        pass

    def expert_load_by_domain(self, domain_ids, n_domains):
        return torch.zeros(0, n_domains, 0, dtype=torch.long)  # dense: no experts

    def update_router_biases(self):
        self.bias_updates += 1
        self.router_bias += 0.001

    def num_params(self, active_only=False):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len):
        return 6.0 * self.num_params()
