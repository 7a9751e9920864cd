"""The parallelism seam: how a model is laid out over the ranks of a training job.

``parallelize(model, mesh, cfg)`` applies, in this order (torchtitan's): activation checkpointing and
``torch.compile`` per transformer block, then FSDP2 (``fully_shard``) per block and on the root. The mesh
has a ``dp_replicate`` and a ``dp_shard`` dimension: shard only = FSDP (ZeRO-3), replicate only = plain
data parallelism, both = HSDP (replicate across nodes, shard within). Gradients are averaged over the
whole data-parallel group by FSDP's reduce-scatter/all-reduce, overlapped with the backward pass; there
is no hand-written all-reduce of the dense weights.

Expert parallelism (``ep`` > 1) borrows its ranks from ``dp_shard``, as torchtitan's does: groups of
``ep`` consecutive ranks split every MoE layer's experts (``moemix.moe_model.expert_parallel`` moves the
tokens), and FSDP leaves the expert weights alone. The ranks holding the same experts (one per ep
group: the ``ep_dp`` dimension of the expert mesh) sum their expert gradients once per optimizer step
(``reduce_expert_grads``); every other parameter is FSDP's as before.

A world of one process keeps the plain module: there is nothing to shard, and proxies (one per core,
no process group) train that way.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from moemix.training.config import Checkpointing, ParallelConfig

log = logging.getLogger(__name__)


def build_mesh(cfg: ParallelConfig, world_size: int, device: torch.device):  # -> DeviceMesh | None
    """The ``(dp_replicate, dp_shard)`` device mesh, or None for a world of one (no process group needed)."""
    if world_size <= 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    shape = cfg.mesh_shape(world_size)
    return init_device_mesh(device.type, shape, mesh_dim_names=("dp_replicate", "dp_shard"))


def build_expert_mesh(cfg: ParallelConfig, world_size: int, device: torch.device):  # -> DeviceMesh | None
    """The ``(ep_dp, ep)`` mesh of expert parallelism, or None without it. Its row-major rank order is
    the data mesh's, so each ep group is ``ep`` consecutive ranks of one ``dp_shard`` row."""
    if world_size <= 1 or cfg.ep == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    cfg.mesh_shape(world_size)  # the one-line error when ep does not fit the mesh
    return init_device_mesh(device.type, (world_size // cfg.ep, cfg.ep), mesh_dim_names=("ep_dp", "ep"))


def expert_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that can hold a slice of their experts (they define ``shard_experts``)."""
    return [m for m in model.modules() if callable(getattr(m, "shard_experts", None))]


def apply_expert_parallel(model: nn.Module, expert_mesh) -> None:
    """Each module keeps its ep rank's experts, as DTensors of the whole stack (sharded over ``ep``,
    replicated over ``ep_dp``): checkpoints then record global shapes and reshard to any mesh, and the
    consolidated export gathers them like FSDP's shards."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    ep_mesh = expert_mesh["ep"]
    modules = expert_modules(model)
    if not modules:
        raise ValueError("parallel.ep > 1 needs a model with routed experts")
    for m in modules:
        m.shard_experts(ep_mesh.get_group(), ep_mesh.size(), ep_mesh.get_local_rank())
        for name, p in list(m.named_parameters(recurse=False)):
            whole = DTensor.from_local(p.detach(), expert_mesh, [Replicate(), Shard(0)], run_check=False)
            setattr(m, name, nn.Parameter(whole))


def sharded_expert_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters expert parallelism split (each rank holds its ep rank's experts)."""
    return [p for m in expert_modules(model) if getattr(m, "shard", None) is not None for p in m.parameters()]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks parallelism and checkpointing wrap: ``model.blocks`` (the model contract)."""
    blocks = getattr(model, "blocks", None)
    return list(blocks) if blocks is not None else []


def apply_activation_checkpointing(model: nn.Module, mode: Checkpointing) -> None:
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("activation checkpointing needs a model with .blocks")
    for i, block in enumerate(blocks):
        if mode == "full" or i % 2 == 0:
            blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("compile needs a model with .blocks")
    for i, block in enumerate(blocks):
        blocks[i] = torch.compile(block, fullgraph=False)


def apply_fsdp(
    model: nn.Module, mesh, cfg: ParallelConfig, device: torch.device, ignored: set[nn.Parameter]
) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if cfg.mixed_precision and device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    replicate, shard = mesh.shape
    # FSDP shards over the 1-D dp_shard mesh; HSDP (and replicate-only, a shard dimension of 1) takes
    # the 2-D mesh: replicate over dim 0, shard over dim 1
    dp_mesh = mesh["dp_shard"] if replicate == 1 else mesh
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # the last block is gathered again at once by backward, so keeping it saves one all-gather
        reshard = cfg.reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard, ignored_params=ignored)
    fully_shard(
        model,
        mesh=dp_mesh,
        mp_policy=mp,
        reshard_after_forward=cfg.reshard_after_forward,
        ignored_params=ignored,
    )
    return model


def parallelize(
    model: nn.Module, mesh, cfg: ParallelConfig, device: torch.device, expert_mesh=None
) -> nn.Module:
    """Lay ``model`` out over ``mesh`` (None: one process, the module stays as it is) and, with
    ``expert_mesh``, split its experts over the ep groups first."""
    if expert_mesh is not None:
        apply_expert_parallel(model, expert_mesh)  # before the wrappers below rename the modules
    apply_activation_checkpointing(model, cfg.activation_checkpointing)
    if cfg.compile:
        apply_compile(model)
    if mesh is None:
        return model
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("parallelize over a mesh needs torch.distributed to be initialised")
    return apply_fsdp(model, mesh, cfg, device, ignored=set(sharded_expert_params(model)))


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
