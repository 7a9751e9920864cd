"""What a training run computes and how: ``TrainConfig`` (``proxies.train`` and ``pretrain.train``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from moemix._io import to_jsonable


@dataclass
class TrainConfig:
    # Budget: ``steps`` if > 0, else ``total_tokens`` / (batch_size * seq_len) rounded up.
    steps: int = 80  # 80 x 16 x 128 = 164k tokens
    total_tokens: int = 0
    batch_size: int = 16  # global sequences per optimizer step (split across data-parallel ranks)
    # sequences per forward/backward on one rank; 0 = the rank's whole share of the batch at once.
    # The step's loss is still the mean over the global batch (gradient accumulation)
    micro_batch_size: int = 0
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
    # bf16 matmuls and wide layers (measured: docs/benchmarks/proxies.md, "bf16 autocast on CPU")
    precision: Literal["fp32", "bf16"] = "fp32"
    measure_mfu: bool = True  # time a matmul once per process to report MFU

    def validate(self) -> None:
        if self.steps < 0 or self.total_tokens < 0:
            raise ValueError("steps and total_tokens must be >= 0")
        if self.steps == 0 and self.total_tokens == 0:
            raise ValueError("set steps or total_tokens")
        if self.batch_size < 1 or self.seq_len < 1:
            raise ValueError("batch_size and seq_len must be >= 1")
        if self.micro_batch_size < 0:
            raise ValueError("micro_batch_size must be >= 0 (0 = no gradient accumulation)")
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

    def micro_batches(self, local_batch_size: int) -> int:
        """How many forward/backward passes one rank makes per optimizer step."""
        micro = self.micro_batch_size or local_batch_size
        if local_batch_size % micro:
            raise ValueError(
                f"micro_batch_size {micro} does not divide the per-rank batch {local_batch_size} "
                f"(batch_size {self.batch_size} over the data-parallel ranks)"
            )
        return local_batch_size // micro

    def tokens_per_run(self) -> int:
        """Global tokens one run trains on (what the sampler's epoch caps are computed for)."""
        return self.planned_tokens


# TrainConfig fields that change how fast or how visibly a run goes, not what it computes: a proxy's
# run id and a checkpoint's resume key leave them out. micro_batch_size is among them for the reason the
# world size is: gradient accumulation computes the same step up to float rounding (tests/training), the
# one exception being a Switch aux loss with aux_loss_scope "micro", which is per forward by definition
EXECUTION_ONLY = (
    "num_threads",
    "device",
    "log_every",
    "checkpoint_every",
    "measure_mfu",
    "eval_every",
    "micro_batch_size",
)


def outcome_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain JSON without its ``EXECUTION_ONLY`` fields: what a run's outcome depends on."""
    return {k: v for k, v in to_jsonable(cfg).items() if k not in EXECUTION_ONLY}


def outcome_view(obj: Any) -> Any:
    """``obj`` (a config dataclass, or a tree of them) as plain JSON, every ``TrainConfig`` in it without
    its ``EXECUTION_ONLY`` fields: what a cache key over a whole config section should hash."""
    if isinstance(obj, TrainConfig):
        return outcome_config(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: outcome_view(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: outcome_view(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [outcome_view(v) for v in obj]
    return to_jsonable(obj)
