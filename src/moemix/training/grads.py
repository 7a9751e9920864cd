"""Gradient bookkeeping that FSDP does not do once experts are split over ep groups.

* ``reduce_expert_grads``: the dense weights' gradients are averaged over the data-parallel group by
  FSDP. An expert's gradient on its rank already sums the contributions of every token its ep group
  sent it; the ranks that hold the same experts (``ep_dp``) sum theirs, and dividing by the world size
  makes it the gradient of the mean of the ranks' losses, as FSDP's average does for the rest.
* ``clip_grad_norm``: the norm over parameters laid out differently (FSDP shards, ep slices), counting
  each element once: every rank adds its local squares divided by how many ranks hold the same
  elements, then one all-reduce sums them.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def reduce_expert_grads(params: list[nn.Parameter], expert_mesh, world_size: int) -> None:
    """Collective over ``expert_mesh['ep_dp']``; every rank calls it once per optimizer step."""
    if not params:
        return
    for p in params:  # an expert slice no token reached still takes part in the collective
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [_local(p.grad) for p in params]
    if expert_mesh["ep_dp"].size() > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective per step, not one per tensor
        dist.all_reduce(flat, group=expert_mesh["ep_dp"].get_group())
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    torch._foreach_div_(grads, float(world_size))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _copies(grad: torch.Tensor, world_size: int) -> int:
    """How many ranks hold the elements this rank holds of ``grad``: a DTensor is replicated over every
    rank outside the dimensions it is sharded on; a plain tensor of a multi-rank run, everywhere."""
    mesh = getattr(grad, "device_mesh", None)
    if mesh is None:
        return world_size
    return world_size // math.prod(mesh.size(i) for i, pl in enumerate(grad.placements) if pl.is_shard())


def clip_grad_norm(params: list[nn.Parameter], max_norm: float, world_size: int) -> torch.Tensor:
    """Clip in place like ``torch.nn.utils.clip_grad_norm_``; returns the global norm before clipping
    (collective when ``world_size`` > 1)."""
    total = None
    locals_ = []
    for p in params:
        if p.grad is None:
            continue
        local = _local(p.grad)
        locals_.append(local)
        sq = local.detach().float().pow(2).sum() / _copies(p.grad, world_size)
        total = sq if total is None else total + sq
    if total is None:
        return torch.zeros(())
    if world_size > 1:
        dist.all_reduce(total)
    norm = total.sqrt()
    if math.isfinite(max_norm):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(locals_, coef.to(locals_[0].dtype))
    return norm
