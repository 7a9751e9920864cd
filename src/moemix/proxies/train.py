"""The one training loop shared by proxy runs and (through the lead's Ray Train job) pretraining.

Design choices that matter for a regression target:
* No early stopping and a fixed step count: every proxy in a swarm must see the same budget,
  otherwise the loss differences measure the stopping rule, not the mixture.
* Cosine schedule with linear warmup to ``min_lr_ratio·lr``; AdamW with decay only on matrices.
* The auxiliary-loss-free router-bias update (``model.update_router_biases()``) runs after every
  optimizer step, as the model expects.
* Data parallelism without DDP wrapping: gradients are all-reduced by hand (flattened) when
  ``torch.distributed`` is initialised. Experts that got no tokens on some rank have ``grad=None``
  there, which DDP would refuse without ``find_unused_parameters``; zeros are reduced instead.
  Router-bias buffers are averaged after the update so ranks never drift apart.
* Checkpoints (model + optimizer + stream state + RNG) are written atomically by rank 0 and the
  stream resumes exactly, so a restarted run reproduces the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from moemix._io import atomic_path, stable_hash, to_jsonable
from moemix.errors import MoemixError
from moemix.kernels.cpu_memory import keep_large_allocations_on_heap
from moemix.proxies.flops import peak_matmul_flops
from moemix.proxies.shards import DomainTokens
from moemix.proxies.stream import MixtureStream

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainConfig:
    # Budget: ``steps`` if > 0, else ``total_tokens`` / (batch_size * seq_len) rounded up.
    steps: int = 80  # demo proxy: 80 x 16 x 128 = 164k tokens, ~20 s on one core
    total_tokens: int = 0
    batch_size: int = 16  # global sequences per optimizer step (split across data-parallel ranks)
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # refuse mixtures that would repeat a domain more often than this (None: no cap)
    max_epochs: float | None = None
    eval_tokens: int = 4096  # per domain, validation split (the same fixed tokens for every proxy)
    eval_batch_size: int = 32
    eval_every: int = 0  # 0: no evaluation during training (callers evaluate at the end)
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    log_every: int = 50
    checkpoint_every: int = 0  # 0: only a final checkpoint (when checkpoint_dir is given)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 = bf16 autocast (fp32 master weights) on CUDA and CPU. On CPU it pays off only with native
    # bf16 matmuls (AVX512-BF16/AMX) and wide layers: d_model 256 trained 1.3-1.5x faster, the
    # d_model-64 demo proxy 0.7x (conversions outweigh its small GEMMs); docs/benchmarks/proxies.md
    precision: Literal["fp32", "bf16"] = "fp32"
    measure_mfu: bool = True  # time a matmul once per process to report MFU

    def validate(self) -> None:
        if self.steps < 0 or self.total_tokens < 0:
            raise ValueError("steps and total_tokens must be >= 0")
        if self.steps == 0 and self.total_tokens == 0:
            raise ValueError("set steps or total_tokens")
        if self.batch_size < 1 or self.seq_len < 1:
            raise ValueError("batch_size and seq_len must be >= 1")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0 and 0 <= min_lr_ratio <= 1")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError("warmup_frac must be in [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be >= 0")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError("max_epochs must be > 0 or null")
        if self.eval_tokens < 1 or self.eval_batch_size < 1:
            raise ValueError("eval_tokens and eval_batch_size must be >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be fp32 or bf16")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def num_steps(self) -> int:
        if self.steps > 0:
            return self.steps
        return -(-self.total_tokens // self.tokens_per_step)

    @property
    def planned_tokens(self) -> int:
        return self.num_steps * self.tokens_per_step

    def tokens_per_run(self) -> int:
        """Global tokens one run trains on (what the sampler's epoch caps are computed for)."""
        return self.planned_tokens


# TrainConfig fields that change how fast or how visibly a run goes, not what it computes: a proxy's
# run id and a checkpoint's fingerprint leave them out
EXECUTION_ONLY = ("num_threads", "device", "log_every", "checkpoint_every", "measure_mfu", "eval_every")


def outcome_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain JSON without its ``EXECUTION_ONLY`` fields: what a run's outcome depends on."""
    return {k: v for k, v in to_jsonable(cfg).items() if k not in EXECUTION_ONLY}


@dataclass
class TrainResult:
    steps: int
    tokens: int  # global trained tokens
    seconds: float  # wall time of the training steps (excludes evaluation and setup)
    tokens_per_s: float
    flops_per_token: float
    achieved_flops_per_s: float  # per rank
    peak_flops_per_s: float  # measured fp32 (or bf16) matmul throughput of this rank's device; 0 if not measured
    mfu: float
    final_loss: float  # mean lm loss over the last log window
    params_active: int
    params_total: int
    epochs: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # [moe_layer][domain][expert] share of each domain's routed tokens, sampled on log steps
    expert_load_by_domain: list[list[list[float]]] = field(default_factory=list)
    resumed_from_step: int = 0
    model: Any = field(default=None, repr=False)  # the trained MoETransformer (not serialised)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "model"}
        return to_jsonable(d)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MoemixError(f"device {device!r} requested but CUDA is not available")
    return dev


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
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False, foreach=None)


def _distributed(world_size: int) -> bool:
    if world_size <= 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise MoemixError(f"world_size={world_size} needs torch.distributed to be initialised first")
    return True


def _allreduce_grads(model: torch.nn.Module, world_size: int) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def _sync_buffers(model: torch.nn.Module, world_size: int) -> None:
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for b in bufs:
        n = b.numel()
        b.copy_(flat[offset : offset + n].view_as(b))
        offset += n


def _fingerprint(model_cfg: Any, cfg: TrainConfig, mixture: Mapping[str, float], world_size: int) -> str:
    # Only what changes the trajectory; logging/checkpoint cadence may differ across restarts
    tc = outcome_config(cfg)
    # world_size is left out on purpose: the global batch and data order do not depend on it, so a
    # run may resume on a different number of workers
    return stable_hash({"model": model_cfg, "train": tc, "mixture": dict(mixture)})


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def make_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context training runs its forward under: bf16 over fp32 master weights, or off."""
    bf16 = precision == "bf16"
    if bf16 and device.type == "cpu" and not _cpu_has_native_bf16():
        log.warning(
            "precision bf16 on a CPU without native bf16 matmuls (AVX512-BF16/AMX): it is emulated "
            "and likely slower than fp32"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train(
    model_cfg: Any,
    train_cfg: TrainConfig,
    data: DomainTokens,
    mixture: Mapping[str, float],
    *,
    rank: int = 0,
    world_size: int = 1,
    checkpoint_dir: str | Path | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    eval_fn: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
    model_factory: Callable[[Any], torch.nn.Module] | None = None,
) -> TrainResult:
    """Train a fresh ``MoETransformer(model_cfg)`` on ``mixture`` of ``data`` for ``train_cfg.num_steps``.

    ``on_log`` receives a metrics dict every ``log_every`` steps (and at the end) on every rank;
    ``eval_fn(model)`` (optional) is called every ``eval_every`` steps and its dict logged too.
    ``model_factory(model_cfg)`` replaces ``MoETransformer`` (tests, other architectures); the
    model must offer ``forward(x, targets) -> (.loss, .lm_loss, .logits)``,
    ``update_router_biases()``, ``num_params(active_only)`` and ``flops_per_token(seq_len)``.
    """
    if model_factory is None:
        from moemix.moe_model import MoETransformer  # lazy: keeps `import moemix.proxies` light

        model_factory = MoETransformer

    cfg = train_cfg
    cfg.validate()
    if getattr(model_cfg, "vocab_size", data.vocab_size) < data.vocab_size:
        raise MoemixError(
            f"model vocab_size {model_cfg.vocab_size} is smaller than the tokenizer's {data.vocab_size}"
        )
    if getattr(model_cfg, "max_seq_len", cfg.seq_len) < cfg.seq_len:
        raise MoemixError(f"train seq_len {cfg.seq_len} exceeds model max_seq_len {model_cfg.max_seq_len}")
    distributed = _distributed(world_size)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        keep_large_allocations_on_heap()  # activations reused across steps instead of re-faulted

    torch.manual_seed(cfg.seed)  # same init on every rank
    model = model_factory(model_cfg).to(device)
    if distributed:
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    opt = build_optimizer(model, cfg)
    total_steps = cfg.num_steps
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
    fingerprint = _fingerprint(model_cfg, cfg, mixture, world_size)

    start_step = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise MoemixError(
                f"checkpoint {ckpt_path} belongs to a different model/train config or mixture; "
                "delete it or use another checkpoint_dir"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["rng"])
        start_step = int(state["step"])
        log.info("resumed from %s at step %d", ckpt_path, start_step)

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        if rank == 0:
            _save_checkpoint(
                ckpt_path,
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "stream": stream.state_dict(),
                    "rng": torch.get_rng_state(),
                    "model_cfg": to_jsonable(model_cfg),
                    "train_cfg": to_jsonable(cfg),
                    "mixture": dict(mixture),
                },
            )
        if distributed:
            dist.barrier()

    flops_per_token = float(model.flops_per_token(cfg.seq_len))
    peak = 0.0
    if cfg.measure_mfu:
        peak = peak_matmul_flops(device, cfg.precision)  # MFU against the peak of the precision in use
    autocast = make_autocast(device, cfg.precision)
    local_tokens_per_step = stream.local_batch_size * cfg.seq_len

    history: list[dict[str, Any]] = []
    load_by_domain: torch.Tensor | None = None
    window_loss = torch.zeros((), device=device)
    window_aux = torch.zeros((), device=device)
    window_steps = 0
    last_loss = float("nan")
    train_seconds = 0.0
    model.train()
    t_window = time.perf_counter()
    for step in range(start_step, total_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = next(stream)
        if hasattr(model, "begin_global_batch"):
            model.begin_global_batch()  # aux_loss_scope="global" counts experts per optimizer step
        x = batch.input_ids.to(device, non_blocking=True)
        y = batch.targets.to(device, non_blocking=True)
        with autocast:
            out = model(x, targets=y)
        out.loss.backward()
        if distributed:
            _allreduce_grads(model, world_size)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_biases()
        if distributed:
            _sync_buffers(model, world_size)
        window_loss += out.lm_loss.detach().float()
        window_aux += (out.loss - out.lm_loss).detach().float()
        window_steps += 1

        done = step + 1
        if done % max(cfg.log_every, 1) == 0 or done == total_steps:
            if hasattr(model, "expert_load_by_domain"):
                # sampled on log steps only: it syncs with the device
                counts = model.expert_load_by_domain(batch.domain_idx, len(stream.domains))
                load_by_domain = counts if load_by_domain is None else load_by_domain + counts
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t_window
            train_seconds += elapsed
            last_loss = float(window_loss) / window_steps
            tps = window_steps * local_tokens_per_step / max(elapsed, 1e-9)
            rec = {
                "step": done,
                "tokens": done * cfg.tokens_per_step,
                "lr": lr_at(step, cfg),
                "loss": last_loss,
                "aux_loss": float(window_aux) / window_steps,
                "tokens_per_s": tps * world_size,
                "flops_per_s": tps * flops_per_token,
                "mfu": tps * flops_per_token / peak if peak else 0.0,
                "epochs": stream.epochs_per_domain,
            }
            history.append(rec)
            if on_log is not None:
                on_log(rec)
            window_loss.zero_()
            window_aux.zero_()
            window_steps = 0
            t_window = time.perf_counter()
        if eval_fn is not None and cfg.eval_every > 0 and done % cfg.eval_every == 0 and done != total_steps:
            rec = {"step": done, **eval_fn(model)}
            model.train()
            history.append(rec)
            if on_log is not None:
                on_log(rec)
            t_window = time.perf_counter()  # evaluation time is not training time
        if cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 and done != total_steps:
            checkpoint(done)
            t_window = time.perf_counter()
    if start_step < total_steps:
        checkpoint(total_steps)

    load_shares: list[list[list[float]]] = []
    if load_by_domain is not None and load_by_domain.numel():
        totals = load_by_domain.sum(-1, keepdim=True).clamp_min(1)
        load_shares = (load_by_domain.double() / totals).tolist()
    steps_run = total_steps - start_step
    local_tps = steps_run * local_tokens_per_step / train_seconds if train_seconds > 0 else 0.0
    achieved = local_tps * flops_per_token
    return TrainResult(
        steps=total_steps,
        tokens=total_steps * cfg.tokens_per_step,
        seconds=train_seconds,
        tokens_per_s=local_tps * world_size,
        flops_per_token=flops_per_token,
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak,
        mfu=achieved / peak if peak else 0.0,
        final_loss=last_loss,
        params_active=int(model.num_params(active_only=True)),
        params_total=int(model.num_params()),
        epochs=stream.epochs_per_domain,
        history=history,
        expert_load_by_domain=load_shares,
        resumed_from_step=start_step,
        model=model,
    )
