"""Configuration of the proxy swarm stage (``proxies:`` in config.yaml).

The number of proxies lives in ``sampler.n_mixtures`` (the mixing package owns sampling). The
default proxy is sized for the demo budget: ~16-24 proxies must fit in a few minutes on 2 cores,
so one proxy trains for about 10-20 s on one core (see docs/benchmarks/proxies.md). Olmix's
finding that proxies below ~15M parameters lose rank fidelity is what ``scale_check`` measures on
your own data: a few swarm mixtures are retrained with a larger model and the Spearman
correlation of their target losses across the two scales is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moemix.config_fields import execution_only
from moemix.mixing.sampling import SamplerConfig
from moemix.moe_model.config import MoEConfig
from moemix.training.config import TargetConfig, TrainConfig


def demo_proxy_model() -> MoEConfig:
    """~0.7M-parameter MoE at vocab 4096 (0.39M active; 8 experts, top-2); vocab_size is replaced by the
    tokenizer's at run time."""
    return MoEConfig(
        vocab_size=4096,
        max_seq_len=128,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_experts=8,
        top_k=2,
        d_expert=128,
    )


def demo_large_model() -> MoEConfig:
    return MoEConfig(
        vocab_size=4096,
        max_seq_len=128,
        d_model=128,
        n_layers=3,
        n_heads=4,
        n_experts=8,
        top_k=2,
        d_expert=256,
    )


@dataclass
class ScaleCheckConfig:
    # retrain the first n swarm mixtures (uniform and natural included) with ``model``; 0 disables
    n_mixtures: int = 0
    model: MoEConfig = field(default_factory=demo_large_model)

    def validate(self) -> None:
        if self.n_mixtures < 0:
            raise ValueError("scale_check.n_mixtures must be >= 0")
        if self.n_mixtures == 1 or self.n_mixtures == 2:
            raise ValueError("scale_check.n_mixtures must be 0 or >= 3 (a rank correlation needs 3 points)")


# ``rounds: auto`` trains at most one batch after the first swarm. Round 2 gained on all seven subset
# targets measured (+0.005 to +0.022 nats in seed-mean). Round 3 gained +0.015 on average on the four
# targets it was first tried on, but +0.000, -0.008, +0.001 and +0.003 on four more measured after them,
# and a fourth round lost 0.036 on one target of two (docs/benchmarks/mixture_quality.md, session 20)
AUTO_MAX_ROUNDS = 2


@dataclass
class ProxiesConfig:
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(n_mixtures=16))
    model: MoEConfig = field(default_factory=demo_proxy_model)
    train: TrainConfig = field(default_factory=TrainConfig)  # its defaults are the demo proxy's
    target: TargetConfig = field(default_factory=TargetConfig)
    num_cpus_per_proxy: float = execution_only(1.0)
    num_gpus_per_proxy: float = execution_only(0.0)
    max_retries: int = execution_only(2)  # Ray re-runs a task whose worker died (system failures)
    transient_retries: int = execution_only(1)  # in-task retries of a proxy that raised (not for MoemixError)
    scale_check: ScaleCheckConfig = field(default_factory=ScaleCheckConfig)
    # evaluations of every domain along each proxy's training (the last at its end): the loss curves
    # let the fit model loss jointly in mixture and training tokens and extrapolate to the pretraining
    # budget (BiMix, Data Mixing Laws); 1 = final losses only
    curve_points: int = 5
    # the uniform mixture trained under this many seeds: the seed-to-seed spread is the noise floor
    # the proposer must beat before it moves away from the baselines
    uniform_seeds: int = 3
    # CLIMB-style iterative search: after the first swarm, rounds - 1 more batches of round_mixtures
    # proxies from a fit on every run so far: half around the proposer's optimum (the mixture that
    # would ship), half around the fit's best predicted mixtures (the search region shrinks round by
    # round); the target then shapes the swarm and joins its cache key (the
    # proxies already trained are reused). auto: up to AUTO_MAX_ROUNDS, each batch only while a fit
    # of every run so far would move the mixture away from uniform and natural (the do-no-harm guard's
    # decision is not the baseline). A target whose best mixture the guard cannot tell from a baseline
    # gains nothing from sampling again around it, while targets with headroom gained in seed-mean
    # from a second round (docs/benchmarks/mixture_quality.md)
    rounds: int | Literal["auto"] = "auto"
    round_mixtures: int = 0  # 0 = half of sampler.n_mixtures

    @property
    def next_round_size(self) -> int:
        return self.round_mixtures or max(1, self.sampler.n_mixtures // 2)

    @property
    def max_rounds(self) -> int:
        """The most rounds this swarm may train (``auto`` decides on the second after the first)."""
        return AUTO_MAX_ROUNDS if self.rounds == "auto" else int(self.rounds)

    def validate(self) -> None:
        if self.rounds != "auto" and (isinstance(self.rounds, bool) or not isinstance(self.rounds, int)):
            raise ValueError(f"rounds must be an integer >= 1 or 'auto', got {self.rounds!r}")
        if self.max_rounds < 1 or self.round_mixtures < 0:
            raise ValueError("rounds must be >= 1 and round_mixtures >= 0")
        if self.curve_points < 1:
            raise ValueError("curve_points must be >= 1")
        if self.uniform_seeds < 1:
            raise ValueError("uniform_seeds must be >= 1")
        if self.num_cpus_per_proxy <= 0:
            raise ValueError("num_cpus_per_proxy must be > 0")
        if self.num_gpus_per_proxy < 0:
            raise ValueError("num_gpus_per_proxy must be >= 0")
        if self.max_retries < 0 or self.transient_retries < 0:
            raise ValueError("max_retries and transient_retries must be >= 0")
        if self.scale_check.n_mixtures > self.sampler.n_mixtures:
            raise ValueError(
                f"scale_check.n_mixtures={self.scale_check.n_mixtures} exceeds "
                f"sampler.n_mixtures={self.sampler.n_mixtures}"
            )
        for sub in (self.sampler, self.model, self.train, self.target, self.scale_check):
            sub.validate()
