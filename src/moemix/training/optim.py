"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from moemix.training.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay from ``lr`` to ``min_lr_ratio·lr`` at the last step."""
    total = cfg.num_steps
    warmup = int(cfg.warmup_frac * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # one group per (weight decay, device mesh): AdamW runs its fused/foreach kernels group by group, and
    # those take DTensors of one mesh at a time (FSDP's shards and expert parallelism's slices differ)
    by_key: dict[tuple[bool, int | None], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            mesh = getattr(p, "device_mesh", None)
            by_key.setdefault((p.ndim >= 2, None if mesh is None else id(mesh)), []).append(p)
    groups = [
        {"params": params, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (decay, _), params in by_key.items()
    ]
    everything = [p for params in by_key.values() for p in params]
    # fused AdamW (one kernel for the whole update) on CUDA; torch's default elsewhere
    fused = bool(everything) and all(p.is_cuda for p in everything)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused, foreach=None)
