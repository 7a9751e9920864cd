"""Run ``moemix.training.train`` as one rank of a gloo job (or alone): the tests' distributed worker.

    python dist_run.py SPEC.json RANK WORLD PORT OUT.json

SPEC: tokens dir, model config, train config, parallel config, mixture, checkpoint dir (optional). Writes
OUT.json (rank 0: loss history, final losses; every rank: its local bytes) when training finishes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from moemix.moe_model import MoEConfig, MoETransformer
from moemix.token_shards import DomainTokens
from moemix.training.config import TrainConfig
from moemix.training.loop import train
from moemix.training.parallel import ParallelConfig


def run(spec: dict, rank: int, world: int) -> dict:
    data = DomainTokens(spec["tokens"])
    built = []  # the model as this rank holds it (sharded in place by FSDP), for its buffers

    def factory(cfg):
        built.append(MoETransformer(cfg))
        return built[-1]

    res = train(
        MoEConfig(**spec["model"]),
        TrainConfig(**spec["train"]),
        data,
        spec["mixture"],
        rank=rank,
        world_size=world,
        parallel=ParallelConfig(**spec.get("parallel", {})),
        checkpoint_dir=spec.get("checkpoint_dir"),
        model_factory=factory,
    )
    out = {
        "rank": rank,
        "losses": [h["loss"] for h in res.history if "loss" in h],
        "resumed_from": res.resumed_from_step,
        "param_bytes": res.local_param_bytes,
        "optimizer_bytes": res.local_optimizer_bytes,
        "router_bias": [b.tolist() for n, b in built[0].named_buffers() if n.endswith("expert_bias")],
        "expert_bytes": sum(
            (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
            for n, p in built[0].named_parameters()
            if ".experts." in n
        ),
    }
    if res.model is not None:
        out["state"] = {
            k: v.double().sum().item() for k, v in res.model.state_dict().items() if v.is_floating_point()
        }
    return out


def main() -> None:
    spec_path, rank, world, port, out_path = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
        sys.argv[5],
    )
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    out = run(spec, rank, world)
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(out, f)
    if world > 1:
        dist.barrier()  # every rank's result is on disk
        # leave without tearing gloo down: its teardown sometimes aborts the process ("terminate called
        # without an active exception") after the work is done, which would read as a failed rank
        sys.stdout.flush()
        os._exit(0)


def spec_for(tokens: str, model: MoEConfig, train_cfg: TrainConfig, mixture: dict, **extra) -> dict:
    return {"tokens": tokens, "model": asdict(model), "train": asdict(train_cfg), "mixture": mixture, **extra}


if __name__ == "__main__":
    main()
