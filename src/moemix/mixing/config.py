"""The fit and propose steps' settings (``fit:`` and ``propose:`` in a pipeline config).

Kept apart from the steps themselves, which import scipy and pandas, so loading a config stays light."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from moemix.mixing.predictors import PREDICTOR_NAMES
from moemix.mixing.predictors.base import check_params

# the column prefix of the mixture weights in a runs table
DEFAULT_WEIGHTS_PREFIX = "w/"


@dataclass
class FitConfig:
    predictor: str = "auto"
    cv_folds: int = 5
    seed: int = 0
    # "combined": one predictor on the (weighted) target; "separate": one per target column, summed
    target_mode: Literal["combined", "separate"] = "combined"
    weight_sum_tol: float = 1e-3
    weights_prefix: str = DEFAULT_WEIGHTS_PREFIX
    # auto only: rerun the whole selection inside each CV fold, so cv_spearman is unbiased (x folds cost)
    nested_cv: bool = False
    predictor_params: dict[str, Any] = field(default_factory=dict)
    plots: bool = True

    def validate(self) -> None:
        if self.predictor not in PREDICTOR_NAMES:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTOR_NAMES)}, got {self.predictor!r}")
        if self.cv_folds < 2:
            raise ValueError("cv_folds must be >= 2")
        if self.target_mode not in ("combined", "separate"):
            raise ValueError("target_mode must be 'combined' or 'separate'")
        if not 0 <= self.weight_sum_tol < 0.5:
            raise ValueError("weight_sum_tol must be in [0, 0.5)")
        check_params(self.predictor, self.predictor_params)


METHODS = ("auto", "simulate", "constrained", "search")


@dataclass
class ProposeConfig:
    # simulate (RegMix: the mean of the top_k samples) cannot reach a corner of the simplex, since every
    # sample keeps some weight on every domain; constrained: the fit's own optimum (SLSQP, or a local
    # search for a non-smooth predictor, from the best samples); search: CLIMB rounds. auto picks by the
    # target (``resolve_method``): simulate when the target weighs every domain, constrained when it
    # leaves some out or is an external evaluation. On two-domain targets constrained measured 0.02-0.07
    # nats better on two corpora of four and tied on two; on the demo's mean target it took a
    # noise-level step that tied uniform (docs/benchmarks/mixture_quality.md, sessions 15-16)
    method: Literal["auto", "simulate", "constrained", "search"] = "auto"
    n_samples: int = 100_000
    top_k: int = 128
    # sampling distribution for simulate/search: Dirichlet around prior**temperature
    temperature: float = 1.0
    concentration_min: float = 0.1
    concentration_max: float = 5.0
    sample_min_weight: float = 0.0
    kl_weight: float = 0.0
    uncertainty_weight: float = 0.0
    min_weight: dict[str, float] = field(default_factory=dict)
    max_weight: dict[str, float] = field(default_factory=dict)
    # no domain more than this many passes over its training tokens at the budget the mixture is for
    # (``target_tokens``, the pretraining run's); applied when that budget and the domains' token counts
    # are known. No proxy trained on more repetition than the sampler's cap (4 epochs by default), so
    # the fit cannot know what more does, and past ~4 epochs repeated tokens are worth much less than new
    # ones (Muennighoff et al., 2023): without the cap a small domain the proxies liked could be repeated
    # dozens of times at a cluster's budget. null = no cap
    max_epochs: float | None = 4.0
    # trust region: no domain may get more than (largest weight any fitted run gave it) + this margin.
    # Predictors fitted on a few dozen noisy proxies extrapolate badly; the demo's unguarded proposal put
    # 0.89 on a domain no run had given over 0.32, and lost to uniform in pretraining. null = no limit.
    max_weight_above_observed: float | None = 0.1
    # the lower side of the trust region: no domain goes below the weight that fewer than this many
    # fitted runs went below (what happens there was never measured); 0 = no lower bound
    min_support_runs: int = 3
    # weight of KL(w || the fallback baseline), in units of the fit's noise (out-of-fold RMSE, seed
    # spread): a noisier predictor is held closer to the mixture do-no-harm falls back to
    uncertainty_kl: float = 1.0
    # do no harm: the optimum is moved toward the fallback baseline by the factor
    # max(0, 1 - Phi(-gain / noise) / Phi(-k)), k this value (``harm_share``): the baseline when the
    # predicted gain is within k noise units, the whole step once a loss is very unlikely (3 units at
    # k = 1); null = always ship the optimum. The factor applies to the predictor's own optimum on the
    # ray from the baseline through the proposal (beyond it when the trust region or the KL pull held
    # the search back), and the nearer of the two to the baseline ships
    min_gain_sigmas: float | None = 1.0
    rounds: int = 4
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.n_samples < 1 or self.top_k < 1:
            raise ValueError("n_samples and top_k must be >= 1")
        if self.kl_weight < 0 or self.uncertainty_weight < 0:
            raise ValueError("kl_weight and uncertainty_weight must be >= 0")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError("max_epochs must be > 0 or null")
        if self.max_weight_above_observed is not None and self.max_weight_above_observed < 0:
            raise ValueError("max_weight_above_observed must be >= 0 or null")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.min_support_runs < 0 or self.uncertainty_kl < 0:
            raise ValueError("min_support_runs and uncertainty_kl must be >= 0")
        if self.min_gain_sigmas is not None and self.min_gain_sigmas < 0:
            raise ValueError("min_gain_sigmas must be >= 0 or null")
        if not 0 < self.concentration_min <= self.concentration_max:
            raise ValueError("need 0 < concentration_min <= concentration_max")
