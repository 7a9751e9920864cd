"""The memory plans of a config's two trainings (one proxy, the pretraining run) and the pretraining check.

``moemix plan`` prints them; ``run_pipeline`` calls ``check_pretrain_memory`` before it starts anything,
so a pretraining config that cannot fit ``pretrain.device_memory_gb`` fails in a second with one line
instead of hours later with an out-of-memory error on every worker.
"""

from __future__ import annotations

import dataclasses

from moemix.moe_model.config import MoEConfig
from moemix.pipeline.config import Config
from moemix.training.config import ParallelConfig, TrainConfig
from moemix.training.memory_plan import MemoryPlan, check_fits, plan_memory


def _as_run(cfg: Config, model: MoEConfig, train: TrainConfig) -> MoEConfig:
    """The model the run builds: its vocab is the trained tokenizer's (at most the configured size; the
    model's own when an existing tokenizer is given) and its context at least the training length."""
    tok = cfg.domains.tokenizer
    vocab = tok.vocab_size if tok.path is None else model.vocab_size
    return dataclasses.replace(model, vocab_size=vocab, max_seq_len=max(model.max_seq_len, train.seq_len))


def proxy_plan(cfg: Config) -> MemoryPlan:
    """One proxy: a single process (world of one) on one GPU when ``proxies.num_gpus_per_proxy`` > 0."""
    p = cfg.proxies
    return plan_memory(_as_run(cfg, p.model, p.train), p.train, ParallelConfig(), 1, p.num_gpus_per_proxy > 0)


def pretrain_plan(cfg: Config) -> MemoryPlan:
    """One pretraining worker: ``pretrain.num_workers`` ranks laid out by ``pretrain.parallel``."""
    p = cfg.pretrain
    return plan_memory(_as_run(cfg, p.model, p.train), p.train, p.parallel, p.num_workers, p.use_gpu)


def check_pretrain_memory(cfg: Config) -> None:
    """A one-line MoemixError when pretraining cannot fit ``pretrain.device_memory_gb`` (unset: no check)."""
    if cfg.pretrain.enabled and cfg.pretrain.device_memory_gb is not None:
        check_fits(pretrain_plan(cfg), cfg.pretrain.device_memory_gb, "pretrain")
