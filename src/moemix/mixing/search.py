"""CLIMB-style iterative mixture search: run a batch, refit, propose the next batch, repeat.

``evaluate`` runs real proxies (the swarm passes a function that submits Ray tasks and waits), so
this loop stays pure: it only samples, fits in memory and proposes. Round 0 is the ordinary swarm
sample (uniform + natural + Dirichlet around the prior); each later round samples around the
currently best-predicted mixtures with a higher concentration, i.e. a shrinking search space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moemix.errors import MoemixError, check_config
from moemix.mixing.fit import FitResult
from moemix.mixing.predictors import make_predictor, predictor_class
from moemix.mixing.predictors.base import blas_threads
from moemix.mixing.propose import ProposeConfig, propose_next_batch
from moemix.mixing.runs import TargetSpec
from moemix.mixing.sampling import SamplerConfig, sample_mixtures


@dataclass
class SearchConfig:
    rounds: int = 3
    first_batch: int = 16
    batch: int = 8
    predictor: str = "auto"
    predictor_params: dict[str, Any] = field(default_factory=dict)
    explore: float = 0.0
    min_distance: float = 0.02
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    propose: ProposeConfig = field(default_factory=lambda: ProposeConfig(n_samples=20_000))

    def validate(self) -> None:
        if self.rounds < 1 or self.first_batch < 3 or self.batch < 1:
            raise ValueError("need rounds >= 1, first_batch >= 3, batch >= 1")


@dataclass
class SearchResult:
    mixtures: np.ndarray  # [n, D] every mixture run, in order
    losses: np.ndarray  # [n]
    rounds: np.ndarray  # [n] round index of each run
    fit: FitResult | None  # predictor fitted on all runs (None when rounds == 1)

    @property
    def best(self) -> tuple[np.ndarray, float]:
        i = int(np.nanargmin(self.losses))
        return self.mixtures[i], float(self.losses[i])


def _fit_in_memory(
    X: np.ndarray,
    y: np.ndarray,
    domains: list[str],
    prior: np.ndarray,
    name: str,
    params: dict[str, Any],
    seed: int,
) -> FitResult:
    ok = np.isfinite(y)
    params = {**({"seed": seed} if predictor_class(name).seeded else {}), **params}
    with blas_threads(1):
        pred = make_predictor(name, **params).fit(X[ok], y[ok])
    return FitResult(
        predictor=pred,
        domains=list(domains),
        weight_cols=[f"w/{d}" for d in domains],
        target=TargetSpec(),
        cv={},
        prior=list(prior),
        prior_source="given",
        n_rows=len(y),
        n_used=int(ok.sum()),
    )


def iterative_search(
    evaluate: Callable[[np.ndarray], np.ndarray],
    prior: np.ndarray,
    domains: list[str],
    cfg: SearchConfig,
    seed: int = 0,
    domain_tokens: np.ndarray | None = None,
    tokens_per_run: int | None = None,
) -> SearchResult:
    """Run ``cfg.rounds`` rounds; ``evaluate(W [b, D]) -> losses [b]`` (NaN for a failed run)."""
    check_config(cfg, "search config")
    p = np.asarray(prior, dtype=np.float64)
    p = p / p.sum()
    scfg = SamplerConfig(**{**cfg.sampler.__dict__, "n_mixtures": cfg.first_batch})
    W = sample_mixtures(p, scfg, seed, domain_tokens, tokens_per_run, domains)
    y = np.asarray(evaluate(W), dtype=np.float64)
    rounds = np.zeros(len(W), dtype=int)
    fit = None
    for r in range(1, cfg.rounds):
        if np.isfinite(y).sum() < 3:
            raise MoemixError(f"search: only {int(np.isfinite(y).sum())} successful runs after round {r - 1}")
        fit = _fit_in_memory(W, y, domains, p, cfg.predictor, cfg.predictor_params, seed)
        nxt = propose_next_batch(
            fit,
            p,
            cfg.batch,
            r,
            cfg.propose,
            existing=W,
            explore=cfg.explore,
            min_distance=cfg.min_distance,
            domain_tokens=domain_tokens,
            tokens_per_run=tokens_per_run,
        )
        y_new = np.asarray(evaluate(nxt), dtype=np.float64)
        W, y = np.vstack([W, nxt]), np.concatenate([y, y_new])
        rounds = np.concatenate([rounds, np.full(len(nxt), r)])
    if cfg.rounds > 1:
        fit = _fit_in_memory(W, y, domains, p, cfg.predictor, cfg.predictor_params, seed)
    return SearchResult(mixtures=W, losses=y, rounds=rounds, fit=fit)
