"""Full MoE pretraining on a chosen mixture with Ray Train (TorchTrainer, Train V2 API).

Each worker runs ``moemix.training.train`` as one rank of the job (Ray Train sets up the
torch.distributed process group; gloo on CPU, NCCL on GPU); ``pretrain.parallel`` lays the model out
(FSDP2 over all workers by default). Sharded DCP checkpoints go to the run's own directory (in the
pipeline, RUN_DIR/pretrain/runs/<key>/), which on a cluster lives on shared storage, and are registered
with Ray Train where they are (no copy), so a worker restarted by Ray's FailureConfig resumes from
``ray.train.get_checkpoint()``, and a re-run of the pipeline from the directory's ``latest``; either may
use another number of workers. Rank 0 evaluates the final model (gathered from the shards) on every
domain and the target and saves ``model.safetensors``. The driver follows ``metrics.jsonl`` and logs
progress while the job runs.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import CheckpointUploadMode, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from moemix._io import atomic_path, write_json_atomic
from moemix.errors import MoemixError
from moemix.pipeline.config import PretrainConfig
from moemix.ray_jobs.at_once import run_side_by_side, runs_at_once
from moemix.ray_jobs.resources import require_resources
from moemix.training.evaluate import TargetConfig

log = logging.getLogger(__name__)

RESULT = "result.json"


def _worker_loop(config: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    from moemix.proxies.run import model_config_for_data
    from moemix.token_shards import DomainTokens
    from moemix.training.checkpoint import latest_checkpoint
    from moemix.training.evaluate import evaluate
    from moemix.training.expert_load import expert_load_by_domain
    from moemix.training.loop import train
    from moemix.training.tensorboard import ScalarWriter

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
    # TensorBoard event files next to metrics.jsonl (`tensorboard --logdir RUN_DIR/pretrain`)
    scalars = ScalarWriter(out_dir) if rank == 0 else None

    def on_log(rec: dict[str, Any]) -> None:
        numbers = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if rank == 0:
            now = time.time()
            with open(metrics_path, "a") as f:
                f.write(json.dumps({**rec, "total_steps": train_cfg.num_steps, "time": now}) + "\n")
            scalars.add(int(rec["step"]), {f"train/{k}": v for k, v in numbers.items() if k != "step"}, now)
        ray.train.report(numbers)

    def on_checkpoint(path: Path, step: int) -> None:
        # every rank reports (Ray Train's report is a barrier). The directory already holds all shards on
        # shared storage, inside the Ray Train run directory (the run's own directory), so it is registered
        # where it is instead of uploaded
        ckpt = ray.train.Checkpoint.from_directory(str(path)) if rank == 0 else None
        ray.train.report(
            {"step": step},
            checkpoint=ckpt,
            checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
            delete_local_checkpoint_after_upload=False,
        )

    # after a FailureConfig restart Ray Train hands back the last checkpoint it registered; the run's own
    # directory may hold a newer one (completed just before the failure, not yet registered)
    ckpt_dir = out_dir / "checkpoints"
    restored = ray.train.get_checkpoint()
    resume_from = (
        Path(restored.path) if restored is not None and latest_checkpoint(ckpt_dir) is None else None
    )

    model_cfg = model_config_for_data(pcfg.model, data.vocab_size, train_cfg.seq_len)
    result = train(
        model_cfg,
        train_cfg,
        data,
        config["mixture"],
        rank=rank,
        world_size=world,
        parallel=pcfg.parallel,
        checkpoint_dir=ckpt_dir,
        resume_from=resume_from,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
    )
    if scalars is not None:
        scalars.close()
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
    # where each domain's validation tokens are routed, for the run report (moemix.report)
    load = expert_load_by_domain(
        model,
        data,
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
            "resumed_from_step": result.resumed_from_step,
            "seconds": result.seconds,
            "tokens_per_s": result.tokens_per_s,
            "mfu": result.mfu,
            "params_active": result.params_active,
            "params_total": result.params_total,
            "world_size": world,
            "checkpoint": str(out_dir / "model.safetensors"),
            "model_config": asdict(model_cfg),
            "expert_load": load,
        },
    )


def pretrain_mixtures(
    pcfg: PretrainConfig,
    target: TargetConfig,
    mixtures: dict[str, dict[str, float]],
    tokens_dir: str | Path,
    run_dirs: dict[str, Path],
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Pretrain one model per named mixture (same config, same token budget) in ``run_dirs[name]``;
    finished ones are read back. The runs are independent: as many as the cluster's free CPUs and GPUs
    hold train at once (at most ``pretrain.max_concurrent_runs`` when set), the rest queue."""
    dirs = {name: Path(run_dirs[name]).resolve() for name in mixtures}
    todo = [name for name in mixtures if not (dirs[name] / RESULT).exists()]
    if todo:
        # Ray Train starts its workers together: the cluster must hold all of them at once
        gpus_per_run = pcfg.num_workers if pcfg.use_gpu else 0
        require_resources(
            f"pretrain ({pcfg.num_workers} workers)",
            pcfg.num_workers * pcfg.cpus_per_worker,
            gpus_per_run,
            "lower pretrain.num_workers or pretrain.cpus_per_worker, or use a bigger cluster",
        )
        at_once = runs_at_once(
            len(todo),
            pcfg.num_workers * pcfg.cpus_per_worker,
            gpus_per_run,
            ray.available_resources(),
            pcfg.max_concurrent_runs,
        )
        if len(todo) > 1:
            log.info("pretrain: %d runs (%s), %d at a time", len(todo), ", ".join(todo), at_once)
        jobs = {
            name: functools.partial(
                _train_one, name, pcfg, target, mixtures[name], Path(tokens_dir).resolve(), dirs[name], seed
            )
            for name in todo
        }
        run_side_by_side(jobs, at_once, what="pretrain")
    results: dict[str, dict[str, Any]] = {}
    for name in mixtures:
        if not (dirs[name] / RESULT).exists():
            raise MoemixError(f"pretrain {name}: finished without writing {dirs[name] / RESULT}")
        results[name] = json.loads((dirs[name] / RESULT).read_text())
    return results


def _train_one(
    name: str,
    pcfg: PretrainConfig,
    target: TargetConfig,
    mixture: dict[str, float],
    tokens_dir: Path,
    run_dir: Path,
    seed: int,
) -> None:
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
            "tokens_dir": str(tokens_dir),  # workers run in their own cwd
            "out_dir": str(run_dir),
            "seed": seed,
        },
        scaling_config=ScalingConfig(
            num_workers=pcfg.num_workers, use_gpu=pcfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            # Ray Train's run directory is the mixture's own, so the checkpoints written there are
            # Ray-managed without a copy
            storage_path=str(run_dir.parent),
            name=run_dir.name,
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    try:
        with _Progress(name, run_dir / "metrics.jsonl"):
            trainer.fit()
    except Exception as e:  # TrainingFailedError wraps the worker's exception
        raise MoemixError(f"pretrain {name}: training failed: {_root_message(e)}") from e


class _Progress:
    """Logs a pretraining run's progress on the driver (step, loss, tokens/s, ETA) from its metrics.jsonl."""

    def __init__(self, name: str, metrics: Path, every_s: float = 10.0):
        self.name, self.metrics, self.every_s = name, metrics, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._offset = metrics.stat().st_size if metrics.exists() else 0  # lines of an earlier attempt

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        first: dict[str, Any] | None = None
        while not self._stop.wait(self.every_s):
            last = self._read_new()
            if last is None:
                continue
            first = first or last
            log.info("pretrain %s: %s", self.name, progress_line(first, last))

    def _read_new(self) -> dict[str, Any] | None:
        if not self.metrics.exists():
            return None
        with open(self.metrics) as f:
            f.seek(self._offset)
            lines = f.readlines()
        complete = [ln for ln in lines if ln.endswith("\n")]
        self._offset += sum(len(ln.encode()) for ln in complete)
        recs = [json.loads(ln) for ln in complete if ln.strip()]
        recs = [r for r in recs if "loss" in r and "total_steps" in r]
        return recs[-1] if recs else None


def progress_line(first: dict[str, Any], last: dict[str, Any]) -> str:
    """``step 120/300 (40%), loss 5.1234, 12,345 tokens/s, ETA 1m30s`` from two metrics records."""
    step, total = int(last["step"]), int(last["total_steps"])
    line = (
        f"step {step}/{total} ({100 * step / max(total, 1):.0f}%), loss {last['loss']:.4f}, "
        f"{last['tokens_per_s']:,.0f} tokens/s"
    )
    if last["step"] > first["step"] and last["time"] > first["time"]:
        rate = (last["step"] - first["step"]) / (last["time"] - first["time"])
        eta = (total - step) / rate
        line += f", ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    return line


def _root_message(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()
    return msg[-1] if msg else type(e).__name__
