"""Full MoE pretraining on a chosen mixture with Ray Train (TorchTrainer, Train V2 API).

Each worker runs ``moemix.proxies.train.train`` on its data-parallel shard of the mixture stream
(Ray Train sets up the torch.distributed process group; gloo on CPU, NCCL on GPU). Checkpoints go to
the pretrain stage directory, which on a cluster lives on shared storage, so a worker restarted by
Ray's FailureConfig, or a re-run of the pipeline, resumes from the last one. Rank 0 evaluates the
final model on every domain and the target and saves ``model.safetensors``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray.train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from moemix._io import atomic_path, write_json_atomic
from moemix.errors import MoemixError
from moemix.pipeline.config import PretrainConfig
from moemix.proxies.evaluate import TargetConfig

log = logging.getLogger(__name__)

RESULT = "result.json"


def _worker_loop(config: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    from moemix.proxies.evaluate import evaluate
    from moemix.proxies.run import fit_model_to_data
    from moemix.proxies.shards import DomainTokens
    from moemix.proxies.train import train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    pcfg: PretrainConfig = config["pretrain"]
    out_dir = Path(config["out_dir"])
    torch.set_num_threads(max(1, int(pcfg.cpus_per_worker)))
    data = DomainTokens(config["tokens_dir"])
    train_cfg = pcfg.train
    if train_cfg.checkpoint_every == 0:
        train_cfg.checkpoint_every = pcfg.checkpoint_every
    metrics_path = out_dir / "metrics.jsonl"

    def on_log(rec: dict[str, Any]) -> None:
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        ray.train.report({k: v for k, v in rec.items() if isinstance(v, (int, float))})

    model_cfg = fit_model_to_data(pcfg.model, data.vocab_size, train_cfg.seq_len)
    result = train(
        model_cfg,
        train_cfg,
        data,
        config["mixture"],
        rank=rank,
        world_size=world,
        checkpoint_dir=out_dir / "checkpoints",
        on_log=on_log,
    )
    if rank != 0:
        return
    model = result.model
    ev = evaluate(
        model,
        data,
        config["target"],
        seq_len=train_cfg.seq_len,
        eval_tokens=train_cfg.eval_tokens,
        batch_size=train_cfg.eval_batch_size,
    )
    with atomic_path(out_dir / "model.safetensors") as tmp:
        # tied embeddings share storage; safetensors wants distinct tensors
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp))
    write_json_atomic(
        out_dir / RESULT,
        {
            "mixture": config["mixture"],
            "target_loss": ev.target,
            "target_bpb": ev.target_bpb,
            "loss": ev.loss,
            "bpb": ev.bpb,
            "tokens": result.tokens,
            "seconds": result.seconds,
            "tokens_per_s": result.tokens_per_s,
            "mfu": result.mfu,
            "params_active": result.params_active,
            "params_total": result.params_total,
            "world_size": world,
            "checkpoint": str(out_dir / "model.safetensors"),
            "model_config": asdict(model_cfg),
        },
    )


def pretrain_mixtures(
    pcfg: PretrainConfig,
    target: TargetConfig,
    mixtures: dict[str, dict[str, float]],
    tokens_dir: str | Path,
    out_dir: str | Path,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Pretrain one model per named mixture (same config, same token budget); finished ones are skipped."""
    out_dir = Path(out_dir).resolve()
    results: dict[str, dict[str, Any]] = {}
    for name, mixture in mixtures.items():
        run_dir = out_dir / name
        if not (run_dir / RESULT).exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            log.info("pretrain %s: %d workers, %d steps", name, pcfg.num_workers, pcfg.train.num_steps)
            resources = {"CPU": pcfg.cpus_per_worker}
            if pcfg.use_gpu:
                resources["GPU"] = 1
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={
                    "pretrain": pcfg,
                    "target": target,
                    "mixture": mixture,
                    "tokens_dir": str(Path(tokens_dir).resolve()),  # workers run in their own cwd
                    "out_dir": str(run_dir),
                    "seed": seed,
                },
                scaling_config=ScalingConfig(num_workers=pcfg.num_workers, use_gpu=pcfg.use_gpu, resources_per_worker=resources),
                run_config=RunConfig(
                    storage_path=str(out_dir / "ray_train"),
                    name=name,
                    failure_config=FailureConfig(max_failures=2),
                ),
            )
            try:
                trainer.fit()
            except Exception as e:  # TrainingFailedError wraps the worker's exception
                raise MoemixError(f"pretrain {name}: training failed: {_root_message(e)}") from e
        if not (run_dir / RESULT).exists():
            raise MoemixError(f"pretrain {name}: finished without writing {run_dir / RESULT}")
        results[name] = json.loads((run_dir / RESULT).read_text())
    return results


def _root_message(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()
    return msg[-1] if msg else type(e).__name__
