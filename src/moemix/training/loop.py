"""The one training loop shared by proxy runs and pretraining (one process, or one rank of many).

Design choices that matter for a regression target:
* No early stopping and a fixed step count: every proxy in a swarm must see the same budget,
  otherwise the loss differences measure the stopping rule, not the mixture.
* Cosine schedule with linear warmup to ``min_lr_ratio·lr``; AdamW with decay only on matrices.
* The auxiliary-loss-free router-bias update (``model.update_router_biases()``) runs after every
  optimizer step from expert counts summed over all ranks, so every rank applies the same update.
* Distributed runs are laid out by ``moemix.training.parallel`` (FSDP2 / HSDP); the loop itself only
  steps. Gradient accumulation over ``micro_batch_size`` keeps the step's loss the mean over the global
  batch; FSDP reduces gradients once per step, on the last micro-batch.
* Checkpoints are sharded DCP checkpoints (``moemix.training.checkpoint``) with the stream position and
  RNG, so a restarted run reproduces the uninterrupted one, on the same or another number of ranks.

``train`` reads as the steps of a run: set up, restore, step until done (logging windows, checkpoints),
summarise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from moemix._io import stable_hash, to_jsonable
from moemix.errors import MoemixError
from moemix.token_shards import DomainTokens
from moemix.training.checkpoint import (
    Checkpointer,
    full_model_state,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
)
from moemix.training.config import TrainConfig, outcome_config
from moemix.training.device import make_autocast, resolve_device
from moemix.training.flops import peak_matmul_flops
from moemix.training.grads import clip_grad_norm, reduce_expert_grads
from moemix.training.malloc_tuning import keep_large_allocations_on_heap
from moemix.training.model_contract import TrainableModel
from moemix.training.optim import build_optimizer, lr_at
from moemix.training.parallel import (
    ParallelConfig,
    build_expert_mesh,
    build_mesh,
    is_sharded,
    parallelize,
    sharded_expert_params,
)
from moemix.training.stream import Batch, MixtureStream

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    tokens: int  # global trained tokens
    seconds: float  # wall time of the training steps (excludes evaluation and setup)
    tokens_per_s: float
    flops_per_token: float
    achieved_flops_per_s: float  # per rank
    peak_flops_per_s: (
        float  # measured fp32 (or bf16) matmul throughput of this rank's device; 0 if not measured
    )
    mfu: float
    final_loss: float  # mean lm loss over the last log window
    params_active: int
    params_total: int
    epochs: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # [moe_layer][domain][expert] share of each domain's routed tokens, sampled on log steps
    expert_load_by_domain: list[list[list[float]]] = field(default_factory=list)
    resumed_from_step: int = 0
    # the trained model as one plain module (gathered from the shards on rank 0; None on other ranks
    # of a sharded run); not serialised
    model: Any = field(default=None, repr=False)
    # bytes of this rank's parameters and optimizer state (its shards, when sharded)
    local_param_bytes: int = 0
    local_optimizer_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "model"}
        return to_jsonable(d)


def resume_key(model_cfg: Any, cfg: TrainConfig, mixture: Mapping[str, float]) -> str:
    """What a checkpoint must match to be resumed: model, outcome-relevant train config, mixture.

    The world size and mesh are left out on purpose: the global batch and data order do not depend on
    them, and the checkpoint reshards, so a run may resume on a different number of workers."""
    return stable_hash({"model": model_cfg, "train": outcome_config(cfg), "mixture": dict(mixture)})


def local_bytes(tensors: Any) -> int:
    """Bytes this rank holds for ``tensors`` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    return local_bytes(v for state in opt.state.values() for v in state.values())


# ---------------------------------------------------------------------------------------- setup
@dataclass
class _Run:
    """Everything one run's steps share."""

    cfg: TrainConfig
    model: Any
    opt: torch.optim.Optimizer
    stream: MixtureStream
    device: torch.device
    autocast: Any
    resume_key: str
    rank: int
    world_size: int
    n_micro: int
    start_step: int = 0
    expert_mesh: Any = None  # the (ep_dp, ep) mesh under expert parallelism
    expert_params: list[torch.nn.Parameter] = field(default_factory=list)


def _check_world(world_size: int) -> bool:
    if world_size <= 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise MoemixError(f"world_size={world_size} needs torch.distributed to be initialised first")
    return True


def _setup(
    model_cfg: Any,
    cfg: TrainConfig,
    data: DomainTokens,
    mixture: Mapping[str, float],
    rank: int,
    world_size: int,
    parallel: ParallelConfig,
    model_factory: Callable[[Any], torch.nn.Module],
) -> _Run:
    cfg.validate()
    parallel.validate()
    if getattr(model_cfg, "vocab_size", data.vocab_size) < data.vocab_size:
        raise MoemixError(
            f"model vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's {data.vocab_size}"
        )
    if getattr(model_cfg, "max_seq_len", cfg.seq_len) < cfg.seq_len:
        raise MoemixError(f"train seq_len {cfg.seq_len} exceeds model max_seq_len {model_cfg.max_seq_len}")
    distributed = _check_world(world_size)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        keep_large_allocations_on_heap()  # activations reused across steps instead of re-faulted

    torch.manual_seed(cfg.seed)  # same init on every rank; FSDP then keeps each rank's shard of it
    model = model_factory(model_cfg)
    if not isinstance(model, TrainableModel):
        raise MoemixError(
            f"{type(model).__name__} does not implement the training contract "
            "(moemix.training.model_contract)"
        )
    model = model.to(device)
    try:
        mesh = build_mesh(parallel, world_size, device) if distributed else None
        expert_mesh = build_expert_mesh(parallel, world_size, device) if distributed else None
        model = parallelize(model, mesh, parallel, device, expert_mesh=expert_mesh)
    except ValueError as e:
        raise MoemixError(str(e)) from None
    stream = MixtureStream(
        data,
        mixture,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        max_epochs=cfg.max_epochs,
        total_tokens=cfg.planned_tokens,
    )
    try:
        n_micro = cfg.micro_batches(stream.local_batch_size)
    except ValueError as e:
        raise MoemixError(str(e)) from None
    return _Run(
        cfg=cfg,
        model=model,
        opt=build_optimizer(model, cfg),
        stream=stream,
        device=device,
        autocast=make_autocast(device, cfg.precision),
        resume_key=resume_key(model_cfg, cfg, mixture),
        rank=rank,
        world_size=world_size,
        n_micro=n_micro,
        expert_mesh=expert_mesh,
        expert_params=sharded_expert_params(model),
    )


def _restore(run: _Run, checkpoint_dir: Path | None, resume_from: Path | None) -> None:
    path = resume_from
    if path is None and checkpoint_dir is not None:
        path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return
    state = read_trainer_state(path)
    if state.get("resume_key") != run.resume_key:
        raise MoemixError(
            f"checkpoint {path} belongs to a different model/train config or mixture; "
            "delete it or use another checkpoint_dir"
        )
    load_checkpoint(path, run.model, run.opt)
    run.stream.load_state_dict(state["stream"])
    torch.set_rng_state(state["rng"])
    run.start_step = int(state["step"])
    log.info("resumed from %s at step %d", path, run.start_step)


def _checkpoint(run: _Run, checkpointer: Checkpointer | None, step: int) -> None:
    if checkpointer is None:
        return
    state = {
        "resume_key": run.resume_key,
        "stream": run.stream.state_dict(),
        "rng": torch.get_rng_state(),
        "train_cfg": to_jsonable(run.cfg),
    }
    checkpointer.save(step, run.model, run.opt, state)


# ----------------------------------------------------------------------------------------- step
def _set_gradient_sync(model: Any, enabled: bool) -> None:
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)


def _train_step(run: _Run, step: int, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step over ``batch`` (this rank's share), in ``run.n_micro`` micro-batches.

    Returns the step's (LM loss, auxiliary loss) on this rank and the global gradient norm before
    clipping, as 0-d tensors (no device sync)."""
    cfg, model = run.cfg, run.model
    for group in run.opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    x = batch.input_ids.to(run.device, non_blocking=True).chunk(run.n_micro)
    y = batch.targets.to(run.device, non_blocking=True).chunk(run.n_micro)
    # global-batch aux loss: the expert counts of the whole step, before any micro-batch's backward
    model.begin_global_batch(x if run.n_micro > 1 else ())
    lm = torch.zeros((), device=run.device)
    aux = torch.zeros((), device=run.device)
    for i, (xm, ym) in enumerate(zip(x, y)):
        _set_gradient_sync(model, i == run.n_micro - 1)  # reduce-scatter once, on the last micro-batch
        with run.autocast:
            out = model(xm, targets=ym)
        # equal micro-batches: the mean of their means is the mean over the batch
        (out.loss / run.n_micro).backward()
        lm += out.lm_loss.detach().float() / run.n_micro
        aux += (out.loss - out.lm_loss).detach().float() / run.n_micro
    # the norm is logged even without clipping: Adam hides a wrong gradient scale, the norm does not
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    if run.expert_params:  # experts split over ep groups: parameters on two meshes
        reduce_expert_grads(run.expert_params, run.expert_mesh, run.world_size)
        grad_norm = clip_grad_norm(list(model.parameters()), max_norm, run.world_size)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP: the norm over all shards
            grad_norm = grad_norm.full_tensor()
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    model.update_router_biases()
    return lm, aux, grad_norm.detach().float()


class _LogWindow:
    """Losses and throughput between two log steps; reading them syncs with the device once per window."""

    def __init__(self, run: _Run, flops_per_token: float, peak: float):
        self.run, self.flops_per_token, self.peak = run, flops_per_token, peak
        self.loss = torch.zeros((), device=run.device)
        self.aux = torch.zeros((), device=run.device)
        self.grad_norm = torch.zeros((), device=run.device)
        self.steps = 0
        self.train_seconds = 0.0
        self.last_loss = float("nan")
        self.local_tokens_per_step = run.stream.local_batch_size * run.cfg.seq_len
        self.t0 = time.perf_counter()

    def add(self, lm: torch.Tensor, aux: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.loss += lm
        self.aux += aux
        self.grad_norm += grad_norm
        self.steps += 1

    def pause(self) -> None:
        """Time from here to ``resume`` (evaluation, checkpoints) is not training time."""
        self.train_seconds += time.perf_counter() - self.t0

    def resume(self) -> None:
        self.t0 = time.perf_counter()

    def close(self, done: int) -> dict[str, Any]:
        run = self.run
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        elapsed = time.perf_counter() - self.t0
        self.train_seconds += elapsed
        losses = torch.stack([self.loss, self.aux]) / self.steps
        if run.world_size > 1:  # the global batch's mean, not this rank's share of it
            dist.all_reduce(losses)
            losses /= run.world_size
        self.last_loss, aux = losses.tolist()
        tps = self.steps * self.local_tokens_per_step / max(elapsed, 1e-9)
        rec = {
            "step": done,
            "tokens": done * run.cfg.tokens_per_step,
            "lr": lr_at(done - 1, run.cfg),
            "loss": self.last_loss,
            "aux_loss": aux,
            "grad_norm": float(self.grad_norm) / self.steps,  # the same on every rank
            "tokens_per_s": tps * run.world_size,
            "flops_per_s": tps * self.flops_per_token,
            "mfu": tps * self.flops_per_token / self.peak if self.peak else 0.0,
            "epochs": run.stream.epochs_per_domain,
        }
        self.loss.zero_()
        self.aux.zero_()
        self.grad_norm.zero_()
        self.steps = 0
        self.t0 = time.perf_counter()
        return rec


def _plain_model(run: _Run, model_cfg: Any, model_factory: Callable[[Any], torch.nn.Module]) -> Any:
    """The trained model as one ordinary module: gathered from the shards (collective) onto rank 0."""
    if not is_sharded(run.model):
        return run.model
    full = full_model_state(run.model)
    if run.rank != 0:
        return None
    plain = model_factory(model_cfg)
    plain.load_state_dict(full)
    for name, buf in run.model.named_buffers():  # router biases etc. are identical on every rank
        plain.get_buffer(name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")).copy_(buf)
    return plain.to(run.device).train(run.model.training)


def _load_shares(load_by_domain: torch.Tensor | None) -> list[list[list[float]]]:
    if load_by_domain is None or not load_by_domain.numel():
        return []
    totals = load_by_domain.sum(-1, keepdim=True).clamp_min(1)
    return (load_by_domain.double() / totals).tolist()


# ------------------------------------------------------------------------------------------ run
def train(
    model_cfg: Any,
    train_cfg: TrainConfig,
    data: DomainTokens,
    mixture: Mapping[str, float],
    *,
    rank: int = 0,
    world_size: int = 1,
    parallel: ParallelConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    eval_fn: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
    model_factory: Callable[[Any], torch.nn.Module] | None = None,
) -> TrainResult:
    """Train a fresh ``MoETransformer(model_cfg)`` on ``mixture`` of ``data`` for ``train_cfg.num_steps``.

    Distributed: call on every rank of an initialised process group with its ``rank`` and
    ``world_size``; ``parallel`` lays the model out (default: FSDP over all ranks). Checkpoints go to
    ``checkpoint_dir``, whose newest one is resumed, unless ``resume_from`` names one. ``on_log`` receives a
    metrics dict every ``log_every`` steps (and at the end) on every rank; ``eval_fn(model)`` (optional,
    called on every rank) every ``eval_every`` steps, its dict logged too; ``on_checkpoint(path, step)``
    after each checkpoint is complete. ``model_factory(model_cfg)`` replaces ``MoETransformer`` (tests,
    other architectures); the model must implement ``moemix.training.model_contract.TrainableModel``.
    """
    if model_factory is None:
        from moemix.moe_model import MoETransformer  # lazy: keeps `import moemix.training` light

        model_factory = MoETransformer
    cfg = train_cfg
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    par = parallel or ParallelConfig()
    run = _setup(model_cfg, cfg, data, mixture, rank, world_size, par, model_factory)
    _restore(run, ckpt_dir, Path(resume_from) if resume_from is not None else None)
    checkpointer = None
    if ckpt_dir is not None:
        checkpointer = Checkpointer(ckpt_dir, async_save=par.async_checkpoint, on_complete=on_checkpoint)
    model, total_steps = run.model, cfg.num_steps

    flops_per_token = float(model.flops_per_token(cfg.seq_len))
    # MFU against the peak of the precision in use
    peak = peak_matmul_flops(run.device, cfg.precision) if cfg.measure_mfu else 0.0
    window = _LogWindow(run, flops_per_token, peak)
    history: list[dict[str, Any]] = []
    load_by_domain: torch.Tensor | None = None
    model.train()
    for step in range(run.start_step, total_steps):
        batch = next(run.stream)
        window.add(*_train_step(run, step, batch))
        done = step + 1
        if done % max(cfg.log_every, 1) == 0 or done == total_steps:
            # sampled on log steps only: it syncs with the device
            last_micro = batch.domain_idx.chunk(run.n_micro)[-1]  # the routing the model kept is its
            counts = model.expert_load_by_domain(last_micro, len(run.stream.domains))
            load_by_domain = counts if load_by_domain is None else load_by_domain + counts
            rec = window.close(done)
            history.append(rec)
            if on_log is not None:
                on_log(rec)
        if eval_fn is not None and cfg.eval_every > 0 and done % cfg.eval_every == 0 and done != total_steps:
            window.pause()
            rec = {"step": done, **eval_fn(model)}
            model.train()
            history.append(rec)
            if on_log is not None:
                on_log(rec)
            window.resume()
        if cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 and done != total_steps:
            window.pause()
            _checkpoint(run, checkpointer, done)
            window.resume()
    if run.start_step < total_steps:
        _checkpoint(run, checkpointer, total_steps)
    if checkpointer is not None:
        checkpointer.close()

    steps_run = total_steps - run.start_step
    seconds = window.train_seconds
    local_tps = steps_run * window.local_tokens_per_step / seconds if seconds > 0 else 0.0
    achieved = local_tps * flops_per_token
    param_bytes, opt_bytes = local_bytes(model.parameters()), optimizer_bytes(run.opt)
    plain = _plain_model(run, model_cfg, model_factory)
    return TrainResult(
        steps=total_steps,
        tokens=total_steps * cfg.tokens_per_step,
        seconds=seconds,
        tokens_per_s=local_tps * world_size,
        flops_per_token=flops_per_token,
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak,
        mfu=achieved / peak if peak else 0.0,
        final_loss=window.last_loss,
        params_active=int(model.num_params(active_only=True)),
        params_total=int(model.num_params()),
        epochs=run.stream.epochs_per_domain,
        history=history,
        expert_load_by_domain=_load_shares(load_by_domain),
        resumed_from_step=run.start_step,
        model=plain,
        local_param_bytes=param_bytes,
        local_optimizer_bytes=opt_bytes,
    )
