"""What a training run computes and how: ``TrainConfig`` (``proxies.train`` and ``pretrain.train``),
``TargetConfig`` (``proxies.target``: what the evaluation reports as the target) and ``ParallelConfig``
(``pretrain.parallel``: the mesh). Plain dataclasses without torch, so loading a config stays light."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from moemix.config_fields import execution_only, execution_only_fields, outcome_view


@dataclass
class TrainConfig:
    # Budget: ``steps`` if > 0, else ``total_tokens`` / (batch_size * seq_len) rounded up.
    steps: int = 80  # 80 x 16 x 128 = 164k tokens
    total_tokens: int = 0
    batch_size: int = 16  # global sequences per optimizer step (split across data-parallel ranks)
    # sequences per forward/backward on one rank; 0 = the rank's whole share of the batch at once.
    # The step's loss is still the mean over the global batch (gradient accumulation)
    micro_batch_size: int = execution_only(0)
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
    eval_every: int = execution_only(0)  # 0: no evaluation during training (callers evaluate at the end)
    seed: int = 0
    num_threads: int = execution_only(0)  # torch intra-op threads; 0 leaves torch's default
    log_every: int = execution_only(50)
    checkpoint_every: int = execution_only(0)  # 0: only a final checkpoint (when checkpoint_dir is given)
    device: str = execution_only("auto")  # auto | cpu | cuda | cuda:N
    # bf16 = bf16 autocast (fp32 master weights) on CUDA and CPU. On CPU it pays off only with native
    # bf16 matmuls and wide layers (measured: docs/benchmarks/proxies.md, "bf16 autocast on CPU")
    precision: Literal["fp32", "bf16"] = "fp32"
    measure_mfu: bool = execution_only(True)  # time a matmul once per process to report MFU

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


# TrainConfig fields that change how fast or how visibly a run goes, not what it computes (declared with
# execution_only above): a proxy's run id and a checkpoint's resume key leave them out. micro_batch_size
# is among them for the reason the world size is: gradient accumulation computes the same step up to
# float rounding (tests/training), the one exception being a Switch aux loss with aux_loss_scope
# "micro", which is per forward by definition
EXECUTION_ONLY = execution_only_fields(TrainConfig)


def outcome_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain JSON without its execution-only fields: what a run's outcome depends on."""
    return outcome_view(cfg)


@dataclass
class TargetConfig:
    # weighted set of domains whose valid losses define the target; None = uniform over all
    domains: dict[str, float] | None = None
    # tokens dir (with meta.json) of an external validation set in the shard format
    external: str | None = None

    def validate(self) -> None:
        if self.domains is not None:
            if not self.domains:
                raise ValueError("target.domains is empty (use null for all domains)")
            if any(w < 0 for w in self.domains.values()) or sum(self.domains.values()) <= 0:
                raise ValueError("target.domains weights must be >= 0 and not all zero")


Checkpointing = Literal["none", "full", "selective"]


@dataclass
class ParallelConfig:
    """Mesh and memory options of a distributed run (``pretrain.parallel``)."""

    # dp_replicate x dp_shard = world size; dp_shard -1 = the world size / dp_replicate
    dp_replicate: int = 1
    dp_shard: int = -1
    # full: recompute every block in backward; selective: every other block (half the activations
    # saved for about half the recompute); none: keep all activations
    activation_checkpointing: Checkpointing = "none"
    compile: bool = False  # torch.compile each transformer block
    # bf16 parameters and fp32 gradient reduction on GPU (FSDP2 MixedPrecisionPolicy); fp32 on CPU
    mixed_precision: bool = True
    reshard_after_forward: bool = True  # ZeRO-3; False keeps gathered params between forward and backward
    # write checkpoints from a background thread (DCP async_save) while training continues
    async_checkpoint: bool = execution_only(False)
    # expert parallelism: ranks per group that split each MoE layer's experts; divides dp_shard
    ep: int = 1

    def validate(self) -> None:
        if self.dp_replicate < 1:
            raise ValueError("parallel.dp_replicate must be >= 1")
        if self.dp_shard < 1 and self.dp_shard != -1:
            raise ValueError("parallel.dp_shard must be >= 1 or -1 (the rest of the world)")
        if self.activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError("parallel.activation_checkpointing must be none, full or selective")
        if self.ep < 1:
            raise ValueError("parallel.ep must be >= 1")

    def mesh_shape(self, world_size: int) -> tuple[int, int]:
        """(dp_replicate, dp_shard) for ``world_size`` ranks; a one-line error when they do not multiply
        out."""
        shard = self.dp_shard if self.dp_shard != -1 else world_size // self.dp_replicate
        if self.dp_replicate * shard != world_size:
            raise ValueError(
                f"parallel: dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} does not match "
                f"the world size {world_size}"
            )
        if shard % self.ep:
            raise ValueError(f"parallel: ep {self.ep} does not divide dp_shard {shard}")
        return self.dp_replicate, shard


__all__ = [
    "EXECUTION_ONLY",
    "Checkpointing",
    "ParallelConfig",
    "TargetConfig",
    "TrainConfig",
    "outcome_config",
    "outcome_view",
]
