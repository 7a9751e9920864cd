"""Propose step: turn a fitted predictor into a mixture.

Methods:
* ``simulate`` (RegMix): score ``n_samples`` Dirichlet mixtures around the prior, return the mean of
  the ``top_k`` best. Averaging the top-k instead of taking the argmin is what keeps RegMix
  robust to predictor noise.
* ``constrained`` (Olmix "exact"): minimise ``predicted loss + kl_weight·KL(w‖prior)`` on the simplex
  with per-domain bounds and token-availability caps; gradient-based (SLSQP, batched central
  differences) for smooth predictors, shrinking local random search for trees.
* ``search`` (CLIMB): several in-silico rounds, each sampling around the best mixtures so far with
  a higher concentration (a shrinking search space); ``propose_next_batch`` gives the next batch
  of *real* proxy runs for the swarm's iterative mode.

All methods share the objective ``pred + uncertainty_weight·std + kl_weight·KL(w‖prior) +
uncertainty_kl·noise·KL(w‖fallback baseline)`` and the bounds; ``_do_no_harm`` then shrinks the optimum
toward the fallback baseline unless the predicted gain clears the noise (the out-of-fold error, the
seed spread, the bootstrap standard error of that gain) by enough that it is very unlikely to be no gain
at all: the step kept is the share of the gate's risk of harm that the evidence rules out. The fallback
baseline is the better-predicted of uniform and natural, or, when the fit cannot tell them apart, the one
nearer the target's weighting of the domains.
Baselines are the predictions at the uniform and natural (prior) mixtures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from moemix.errors import MoemixError, check_config
from moemix.mixing.config import ProposeConfig
from moemix.mixing.fit import FitResult
from moemix.mixing.predictors.base import one_blas_thread
from moemix.mixing.sampling import dirichlet_batch, normalize_prior, project_capped, sparsify, tempered
from moemix.mixing.schema import (
    Baselines,
    Decision,
    DomainWeight,
    MixtureDoc,
    ProposerInfo,
    ScaleTransfer,
    TargetInfo,
)

CHUNK = 8192
# bumped when what the proposer chooses or writes for the same fit and config changes: the propose stage's key
# includes it
PROPOSE_FORMAT = 13  # 3: James-Stein shrinkage in do-no-harm; 4: its noise includes the out-of-fold error;
# 5: the decision records the withheld optimum; 6-7: the shrink applies to the optimum on the ray;
# 8: baselines within the noise of each other: the one nearer the target's weighting; 9: method auto;
# 10: the trust-region-edge note also for an optimum the guard kept most of the step to;
# 11: that note names the proxies.rounds that trains one more batch; 12: the step kept is the share of the
# gate's risk of harm ruled out (James-Stein's share before); 13: a note when the predicted levels leave
# out the pretrain model's size


@dataclass
class Proposal:
    domains: list[str]
    weights: np.ndarray
    predicted_loss: float
    predicted_std: float | None
    baselines: dict[str, float]
    method: str
    constraints: dict[str, Any]
    n_evaluated: int = 0
    decision: Decision | None = None
    # why ``method`` was chosen when the config asked for ``auto``
    method_reason: str | None = None

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.domains, map(float, self.weights)))


def resolve_method(method: str, fit: FitResult) -> tuple[str, str | None]:
    """The search method ``auto`` stands for on this fit's target, and why (None when not ``auto``).

    Where the target weighs every domain, starving any domain raises a term of the target itself, so
    the optimum lies inside the simplex, where the top-k mean of ``simulate`` is the more robust to a
    noisy fit. Where the target leaves domains out (or is an external evaluation), their best weight is
    set by transfer alone and may be ~0: a face of the simplex, which that mean cannot reach.
    """
    if method != "auto":
        return method, None
    tw = fit.target_weights()
    if tw is None:
        return "constrained", (
            "auto: the target is not a weighted sum of the domains' losses, so its optimum may lie on a "
            "face of the simplex, which simulate's top-k mean cannot reach"
        )
    left_out = [d for d, t in zip(fit.domains, tw) if t <= 0]
    if left_out:
        return "constrained", (
            f"auto: the target leaves out {len(left_out)} of {len(tw)} domains, whose best weight may be "
            "~0, which simulate's top-k mean cannot reach"
        )
    return "simulate", (
        "auto: the target weighs every domain, so its optimum is inside the simplex, where simulate's "
        "top-k mean is the more robust to the fit's noise"
    )


def bounds_for(
    domains: list[str],
    cfg: ProposeConfig,
    domain_tokens: np.ndarray | None = None,
    target_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    d = len(domains)
    lo, hi = np.zeros(d), np.ones(d)
    for key, table, arr in (("min_weight", cfg.min_weight, lo), ("max_weight", cfg.max_weight, hi)):
        for name, v in table.items():
            if name not in domains:
                raise MoemixError(
                    f"constraints.{key}: unknown domain {name!r} (domains: {', '.join(domains)})"
                )
            if not 0 <= float(v) <= 1:
                raise MoemixError(f"constraints.{key}.{name}: {v} is not in [0, 1]")
            arr[domains.index(name)] = float(v)
    if cfg.max_epochs is not None:
        if domain_tokens is None or target_tokens is None:
            raise MoemixError("constraints.max_epochs: needs domain token counts and target_tokens")
        tok = np.asarray(domain_tokens, dtype=np.float64)
        if tok.shape != (d,):
            raise MoemixError(f"domain_tokens: has {tok.size} entries, expected {d}")
        if target_tokens <= 0:
            raise MoemixError("target_tokens: must be > 0")
        hi = np.minimum(hi, cfg.max_epochs * tok / float(target_tokens))
    for i in range(d):
        if lo[i] > hi[i] + 1e-12:
            raise MoemixError(
                f"constraints: domain {domains[i]!r} needs weight >= {lo[i]:.4g} but may have at most "
                f"{hi[i]:.4g} (max_weight / max_epochs)"
            )
    if lo.sum() > 1 + 1e-9:
        raise MoemixError(f"constraints.min_weight: minimum weights sum to {lo.sum():.4g} > 1")
    if hi.sum() < 1 - 1e-9:
        worst = domains[int(np.argmin(hi))]
        raise MoemixError(
            f"constraints: upper bounds sum to {hi.sum():.4g} < 1, no mixture fits the token budget "
            f"(most limiting domain {worst!r}); raise max_epochs or lower target_tokens"
        )
    return lo, hi


class _Objective:
    """``pred + uncertainty_weight·std + kl_weight·KL(w‖prior) + anchor_weight·KL(w‖anchor)``."""

    def __init__(
        self,
        fit: FitResult,
        prior: np.ndarray,
        cfg: ProposeConfig,
        anchor: np.ndarray | None = None,
        anchor_weight: float = 0.0,
    ):
        self.pred = fit.predictor
        self.prior = np.maximum(prior, 1e-12)
        self.anchor = None if anchor is None else np.maximum(anchor, 1e-12)
        self.anchor_weight = anchor_weight
        self.cfg = cfg
        self.n_eval = 0

    def mean_std(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        W = np.atleast_2d(W)
        means, stds = [], []
        need_std = self.cfg.uncertainty_weight > 0
        for s in range(0, len(W), CHUNK):
            if need_std:
                m, sd = self.pred.predict_with_std(W[s : s + CHUNK])
                stds.append(sd if sd is not None else np.zeros(len(m)))
            else:
                m = self.pred.predict(W[s : s + CHUNK])
            means.append(m)
        self.n_eval += len(W)
        return np.concatenate(means), (np.concatenate(stds) if need_std else None)

    def __call__(self, W: np.ndarray) -> np.ndarray:
        W = np.clip(np.atleast_2d(W), 0.0, None)
        mean, std = self.mean_std(W)
        out = mean.copy()
        if std is not None:
            out += self.cfg.uncertainty_weight * std
        for weight, ref in ((self.cfg.kl_weight, self.prior), (self.anchor_weight, self.anchor)):
            if weight > 0:
                with np.errstate(divide="ignore", invalid="ignore"):
                    kl = np.where(W > 0, W * np.log(W / ref), 0.0).sum(axis=1)
                out += weight * kl
        return out


def _samples(
    rng: np.random.Generator, prior: np.ndarray, n: int, cfg: ProposeConfig, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    base = tempered(prior, cfg.temperature)
    scales = np.exp(rng.uniform(np.log(cfg.concentration_min), np.log(cfg.concentration_max), size=n))
    W = dirichlet_batch(rng, base, scales)
    W = sparsify(W, cfg.sample_min_weight)
    return project_capped(W, lo, hi)


def _around(
    rng: np.random.Generator, centers: np.ndarray, n: int, conc: float, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Dirichlet samples centred on ``centers`` (mean = center); larger ``conc`` = tighter."""
    idx = rng.integers(0, len(centers), size=n)
    d = centers.shape[1]
    alpha = conc * np.maximum(centers[idx], 0.02 / d)
    g = rng.gamma(alpha)
    W = g / np.maximum(g.sum(axis=1, keepdims=True), 1e-300)
    return project_capped(W, lo, hi)


def _simulate(obj: _Objective, prior, cfg, lo, hi, rng) -> np.ndarray:
    W = _samples(rng, prior, cfg.n_samples, cfg, lo, hi)
    scores = obj(W)
    k = min(cfg.top_k, len(W))
    top = np.argsort(scores)[:k]
    return project_capped(W[top].mean(axis=0), lo, hi)[0]


def _search(obj: _Objective, prior, cfg, lo, hi, rng) -> np.ndarray:
    per_round = max(cfg.n_samples // cfg.rounds, 64)
    pool = _samples(rng, prior, per_round, cfg, lo, hi)
    scores = obj(pool)
    keep = max(8, min(cfg.top_k, per_round // 8))
    conc = 20.0 * len(prior)
    for _ in range(cfg.rounds - 1):
        best = pool[np.argsort(scores)[:keep]]
        new = _around(rng, best, per_round, conc, lo, hi)
        pool = np.vstack([best, new])
        scores = np.concatenate([scores[np.argsort(scores)[:keep]], obj(new)])
        conc *= 3.0  # shrink the search space round by round
    top = np.argsort(scores)[: min(cfg.top_k // 4 or 1, len(pool))]
    return project_capped(pool[top].mean(axis=0), lo, hi)[0]


def _slsqp(obj: _Objective, start: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    d = len(start)
    h = 1e-5

    def f(w):
        return float(obj(w[None, :])[0])

    def grad(w):
        # one batched predict for all 2D perturbations instead of 2D separate calls
        E = np.eye(d) * h
        P = np.vstack([w + E, w - E])
        v = obj(P)
        return (v[:d] - v[d:]) / (2 * h)

    res = minimize(
        f,
        start,
        jac=grad,
        method="SLSQP",
        bounds=list(zip(lo, hi)),
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(d)}],
        options={"maxiter": 200, "ftol": 1e-10},
    )
    w = np.clip(res.x, lo, hi)
    return project_capped(w, lo, hi)[0]


def _local_search(obj: _Objective, start: np.ndarray, lo, hi, rng, rounds: int = 12, per_round: int = 512):
    best, best_v = start, float(obj(start[None, :])[0])
    conc = 10.0 * len(start)
    for _ in range(rounds):
        cand = _around(rng, best[None, :], per_round, conc, lo, hi)
        v = obj(cand)
        j = int(np.argmin(v))
        if v[j] < best_v:
            best, best_v = cand[j], float(v[j])
        conc *= 1.6
    return best


def _constrained(obj: _Objective, prior, cfg, lo, hi, rng, smooth: bool) -> np.ndarray:
    W = _samples(rng, prior, min(cfg.n_samples, 20_000), cfg, lo, hi)
    scores = obj(W)
    starts = [W[i] for i in np.argsort(scores)[:4]]
    starts.append(project_capped(prior, lo, hi)[0])
    starts.append(project_capped(W[np.argsort(scores)[: cfg.top_k]].mean(axis=0), lo, hi)[0])
    best, best_v = None, np.inf
    for s in starts:
        w = _slsqp(obj, s, lo, hi) if smooth else _local_search(obj, s, lo, hi, rng)
        v = float(obj(w[None, :])[0])
        if v < best_v:
            best, best_v = w, v
    return best


def _epoch_caps(
    cfg: ProposeConfig, domain_tokens: np.ndarray | None, target_tokens: int | None
) -> np.ndarray | None:
    """Each domain's largest weight under ``max_epochs`` at the budget (None when not applied)."""
    if cfg.max_epochs is None or domain_tokens is None or target_tokens is None:
        return None
    tok = np.asarray(domain_tokens, dtype=np.float64)
    return np.minimum(1.0, cfg.max_epochs * tok / float(target_tokens))


def _trust_region(fit: FitResult, cfg: ProposeConfig, lo: np.ndarray) -> np.ndarray | None:
    """Per-domain upper bounds that keep the proposal near the mixtures the predictor was fitted on."""
    if cfg.max_weight_above_observed is None or fit.observed_max_weight is None:
        return None
    observed = np.asarray(fit.observed_max_weight, dtype=np.float64)
    if observed.shape != lo.shape:
        raise MoemixError(f"fit: observed_max_weight has {observed.size} entries, expected {lo.size}")
    # a user's min_weight wins over the trust region
    return np.maximum(np.minimum(observed + cfg.max_weight_above_observed, 1.0), lo)


def _support_floor(fit: FitResult, cfg: ProposeConfig, hi: np.ndarray) -> np.ndarray | None:
    """Per-domain lower bounds: the ``min_support_runs``-th smallest weight the fitted runs gave each
    domain."""
    if cfg.min_support_runs == 0 or fit.observed_weights is None:
        return None
    W = np.asarray(fit.observed_weights, dtype=np.float64)
    if W.ndim != 2 or W.shape[1] != hi.size or len(W) < cfg.min_support_runs:
        return None
    floor = np.sort(W, axis=0)[cfg.min_support_runs - 1]
    return np.minimum(floor, hi)  # never above a cap (token budget, max_weight)


def fit_noise(fit: FitResult) -> float | None:
    """The loss difference the fit cannot tell from noise: the larger of its out-of-fold RMSE and the
    spread of a difference of two seeds (sqrt 2 x the seed std of the replicated mixture)."""
    parts = []
    rmse = fit.cv.get("rmse")
    if rmse is not None and np.isfinite(rmse):
        parts.append(float(rmse))
    if fit.seed_noise and fit.seed_noise.get("std") is not None:
        parts.append(float(np.sqrt(2.0) * fit.seed_noise["std"]))
    return max(parts) if parts else None


# a shrink factor this close to 1 ships the optimum itself (the rest is below any measurable difference)
SHIP_WHOLE_STEP = 0.99


def _no_gain_chance(sigmas: float) -> float:
    """Phi(-sigmas): the chance that a gain predicted ``sigmas`` noise units above zero is none at all."""
    return float(np.exp(log_ndtr(-sigmas)))


def harm_share(gain: float, noise: float, k: float) -> float:
    """The share of the step from the baseline to the optimum that do-no-harm keeps.

    A step toward the optimum does harm only when the true gain is not positive, a chance of
    Phi(-gain/noise). The gate ships the baseline at a chance of Phi(-k) or more (one time in six at
    k = 1); above it the step kept is the share of the gate's risk that the evidence rules out,
    ``1 - Phi(-gain/noise) / Phi(-k)``. Near the gate this is James-Stein's ``1 - (k noise/gain)^2``
    (both 0.50 at 1.41 noise units), which kept the small mean-target gains from shipping; at 3 units
    it keeps 0.99 of the step where James-Stein kept 0.89, and on every subset target measured (gains
    of 3-9 noise units, five corpora, 1x and 13x the pretrain model) that held-back part cost
    0.00-0.07 nats against the whole step (docs/benchmarks/mixture_quality.md, session 21).
    """
    if gain <= 0 or noise <= 0:
        return 1.0 if gain > 0 else 0.0
    if gain <= k * noise:
        return 0.0
    # in logs: a strict gate's Phi(-k) underflows long before the ratio does
    return max(0.0, 1.0 - float(np.exp(log_ndtr(-gain / noise) - log_ndtr(-k))))


# points on the ray beyond the proposal at which do-no-harm looks for the predicted loss's least value
RAY_POINTS = 33


def _ray_optimum(
    predict: Callable[[np.ndarray], np.ndarray],
    base: np.ndarray,
    w: np.ndarray,
    user_lo: np.ndarray,
    user_hi: np.ndarray,
    t_cap: float,
) -> float:
    """Where the predicted loss is least on the ray from ``base`` through ``w``, at or beyond ``w``, in
    units of the step (1 = ``w``), searched up to ``t_cap`` or the user's own bounds. Beyond 1 where the
    proposer's pulls toward the baseline (trust region, support floor, noise-scaled KL, top-k averaging)
    stopped short of the predictor's own optimum."""
    d = w - base
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(d > 1e-12, (user_hi - base) / d, np.inf)
        down = np.where(d < -1e-12, (user_lo - base) / d, np.inf)
    t_max = float(min(up.min(), down.min(), t_cap))
    if not np.isfinite(t_max) or t_max <= 1.0 + 1e-9:
        return 1.0
    t = np.linspace(1.0, t_max, RAY_POINTS)
    vals = predict(base + t[:, None] * d)
    vals = np.where(np.isfinite(vals), vals, np.inf)
    return float(t[int(np.argmin(vals))])


def _fallback_baseline(
    fit: FitResult, cfg: ProposeConfig, baselines: dict[str, np.ndarray], noise: float | None
) -> tuple[str, str | None]:
    """The baseline do-no-harm falls back to (and the KL pull anchors on), and why when it is not simply
    the one predicted better: when the fit cannot tell the baselines apart (their predicted target
    losses within ``min_gain_sigmas`` x the noise), the one nearer the target's own weighting of the
    domains (largest ``sum target_i log baseline_i``): uniform for the mean of all domains, natural when
    it gives the target's domains more. Picking by a difference inside the noise is a coin toss, and on
    the lopsided corpus it shipped natural for the mean of all domains, 0.035 nats worse than uniform."""
    names = list(baselines)
    pred = fit.predictor.predict(np.vstack(list(baselines.values())))
    better = names[int(np.argmin(pred))]
    target = fit.target_weights()
    if target is None or noise is None or cfg.min_gain_sigmas is None:
        return better, None
    apart = float(np.max(pred) - np.min(pred))
    if apart > cfg.min_gain_sigmas * noise:
        return better, None
    fit_to_target = [float(np.sum(target * np.log(np.maximum(baselines[n], 1e-300)))) for n in names]
    nearest = names[int(np.argmax(fit_to_target))]
    if nearest == better:
        return better, None
    return nearest, (
        f"uniform and natural are predicted within the noise of each other ({apart:.4f} <= "
        f"{cfg.min_gain_sigmas:g} x {noise:.4f}): {nearest}, the nearer to the target's weighting of "
        "the domains"
    )


def _do_no_harm(
    fit: FitResult,
    cfg: ProposeConfig,
    w: np.ndarray,
    name: str,
    base: np.ndarray,
    noise: float | None,
    user_lo: np.ndarray,
    user_hi: np.ndarray,
) -> tuple[np.ndarray, Decision]:
    """Shrink ``w`` toward the baseline ``base`` (named ``name``) when its predicted gain over it is
    within the noise."""
    W = np.vstack([w, base])
    pred = fit.predictor.predict(W)
    gain = float(pred[1] - pred[0])
    members = fit.predictor.predict_members(W) if hasattr(fit.predictor, "predict_members") else None
    if members is not None and len(members) >= 2:
        # the standard error of this very difference across refits on resampled runs measures how
        # well the data pin the fit down, not how wrong the model is; the out-of-fold error (``noise``
        # as passed, from fit_noise) measures the second. The gain must clear both: small gains that
        # cleared the bootstrap error alone did not hold at the pretraining scale (-0.056, +0.007,
        # -0.007 nats for predicted +0.011, +0.011, +0.028; docs/benchmarks/mixture_quality.md)
        spread = float(np.std(members[:, 1] - members[:, 0], ddof=1))
        noise = spread if noise is None else max(noise, spread)
    withheld = {
        "optimum": {d: round(float(v), 6) for d, v in zip(fit.domains, w)},
        "optimum_predicted_loss": float(pred[0]),
    }
    if cfg.min_gain_sigmas is None or noise is None or cfg.min_gain_sigmas == 0:
        return w, Decision("optimum", name, gain, noise, 1.0, None, **withheld)
    lam = harm_share(gain, noise, cfg.min_gain_sigmas)
    # the two guards bound the step, they do not compound: the share shrinks the predictor's own
    # optimum (where the predicted loss is least on the ray through ``w``), and ``w`` is where the
    # proposer's pulls toward the baseline (trust region, noise-scaled KL, top-k averaging) left it; the
    # nearer of the two to the baseline ships. When the predicted loss is least at ``w`` this is the
    # share as is (lam of the step). Shrinking ``w`` itself counted the noise twice, and cost the
    # subset targets 0.04-0.07 nats against the whole step at every scale measured.
    ray = _ray_optimum(fit.predictor.predict, base, w, user_lo, user_hi, 1.0 / lam) if lam > 0 else 1.0
    keep = min(1.0, lam * ray)
    guard = {**withheld, "signal_share": float(lam), "ray_optimum": float(ray)}
    beyond = f"; the predicted loss falls until {ray:.2f} x the step" if ray >= 1.005 else ""
    if gain > 0 and noise > 0:
        beyond = f" (chance it is no gain {_no_gain_chance(gain / noise):.2g}){beyond}"
    if keep >= SHIP_WHOLE_STEP:
        return w, Decision(
            "optimum",
            name,
            gain,
            noise,
            1.0,
            f"predicted gain {gain:.4f} over {name} is {gain / noise:.1f} x its noise {noise:.4f}{beyond}",
            **guard,
        )
    if keep == 0.0:
        why = (
            f"no predicted gain over {name} ({gain:.4f})"
            if gain <= 0
            else f"predicted gain {gain:.4f} over {name} is within {cfg.min_gain_sigmas:g} x its noise "
            f"{noise:.4f}"
        )
        return base.copy(), Decision(
            "baseline",
            name,
            gain,
            noise,
            0.0,
            f"{why}; the proxies give no evidence to move away from it",
            **guard,
        )
    shrunk = base + keep * (w - base)
    return shrunk, Decision(
        "shrunk",
        name,
        gain,
        noise,
        float(keep),
        f"predicted gain {gain:.4f} over {name} is {gain / noise:.1f} x its noise {noise:.4f}{beyond}: "
        f"kept {keep:.2f} of the step from {name} to the optimum",
        **guard,
    )


@one_blas_thread
def propose(
    fit: FitResult,
    prior: np.ndarray | None,
    cfg: ProposeConfig,
    domain_tokens: np.ndarray | None = None,
    target_tokens: int | None = None,
) -> Proposal:
    """Best mixture under ``cfg``. ``prior=None`` uses the prior stored at fit time (else uniform)."""
    check_config(cfg, "propose config")
    domains = fit.domains
    p = normalize_prior(fit.prior_array() if prior is None else prior, "prior")
    if p.size != len(domains):
        raise MoemixError(f"prior: has {p.size} weights, the fit has {len(domains)} domains")
    if domain_tokens is None and fit.domain_tokens is not None:
        domain_tokens = np.asarray(fit.domain_tokens, dtype=np.float64)
    if domain_tokens is None or target_tokens is None:
        cfg = replace(cfg, max_epochs=None)  # no budget to cap repetition at
    lo, hi = bounds_for(domains, cfg, domain_tokens, target_tokens)
    epoch_hi = _epoch_caps(cfg, domain_tokens, target_tokens)
    user_lo, user_hi = lo.copy(), hi.copy()  # the user's own constraints, before the trust region
    trust_hi = _trust_region(fit, cfg, lo)
    if trust_hi is not None:
        hi = np.minimum(hi, trust_hi)
        if hi.sum() < 1 - 1e-9:
            raise MoemixError(
                f"constraints: upper bounds sum to {hi.sum():.4g} < 1 once limited to the explored "
                f"region (max_weight_above_observed={cfg.max_weight_above_observed}); raise it or "
                "set it to null"
            )
    floor = _support_floor(fit, cfg, hi)
    if floor is not None:
        lo = np.maximum(lo, floor)
        if lo.sum() > 1 - 1e-9:  # too little room left: keep the floors' proportions, scaled to fit
            lo = lo * (0.9 / lo.sum())
    noise = fit_noise(fit)
    uniform = np.full(len(domains), 1.0 / len(domains))
    # the baselines as the closest mixtures the user's own constraints allow (not the trust region:
    # uniform and natural are always among the swarm's runs)
    feasible = {
        name: project_capped(b, user_lo, user_hi)[0] for name, b in (("uniform", uniform), ("natural", p))
    }
    # the noisier the fit, the harder the pull toward the baseline do-no-harm falls back to
    anchor_name, tie_note = _fallback_baseline(fit, cfg, feasible, noise)
    anchor_weight = cfg.uncertainty_kl * noise if noise is not None else 0.0
    rng = np.random.default_rng(cfg.seed)
    obj = _Objective(fit, p, cfg, anchor=feasible[anchor_name], anchor_weight=anchor_weight)
    smooth = bool(getattr(fit.predictor, "smooth", True))
    method, method_reason = resolve_method(cfg.method, fit)
    if method == "simulate":
        w = _simulate(obj, p, cfg, lo, hi, rng)
    elif method == "search":
        w = _search(obj, p, cfg, lo, hi, rng)
    else:
        w = _constrained(obj, p, cfg, lo, hi, rng, smooth)
    w = np.clip(w, 0.0, None)
    w = w / w.sum()
    w, decision = _do_no_harm(fit, cfg, w, anchor_name, feasible[anchor_name], noise, user_lo, user_hi)
    if tie_note is not None:
        decision.reason = f"{tie_note}; {decision.reason}" if decision.reason else tie_note
    mean, std = fit.predictor.predict_with_std(w[None, :])
    base = fit.predictor.predict(np.vstack([uniform, p]))
    constraints: dict[str, Any] = {
        "min_weight": dict(cfg.min_weight),
        "max_weight": dict(cfg.max_weight),
        "max_epochs": cfg.max_epochs,
        "target_tokens": target_tokens,
        "kl_weight": cfg.kl_weight,
        "uncertainty_weight": cfg.uncertainty_weight,
        "max_weight_above_observed": cfg.max_weight_above_observed,
        "min_support_runs": cfg.min_support_runs,
        "min_gain_sigmas": cfg.min_gain_sigmas,
        "uncertainty_kl": {"anchor": anchor_name, "weight": anchor_weight},
    }
    if epoch_hi is not None:
        constraints["epoch_cap_max_weight"] = dict(zip(domains, (round(float(v), 6) for v in epoch_hi)))
    if trust_hi is not None:
        constraints["trust_region_max_weight"] = dict(zip(domains, (round(float(v), 6) for v in trust_hi)))
    if floor is not None:
        constraints["trust_region_min_weight"] = dict(zip(domains, (round(float(v), 6) for v in lo)))
    return Proposal(
        domains=list(domains),
        weights=w,
        predicted_loss=float(mean[0]),
        predicted_std=None if std is None else float(std[0]),
        baselines={"uniform": float(base[0]), "natural": float(base[1])},
        method=method,
        constraints=constraints,
        n_evaluated=obj.n_eval,
        decision=decision,
        method_reason=method_reason,
    )


def propose_next_batch(
    fit: FitResult,
    prior: np.ndarray | None,
    n_next: int,
    round_idx: int,
    cfg: ProposeConfig | None = None,
    existing: np.ndarray | None = None,
    explore: float = 0.0,
    min_distance: float = 0.02,
    domain_tokens: np.ndarray | None = None,
    tokens_per_run: int | None = None,
    anchor: np.ndarray | None = None,
) -> np.ndarray:
    """CLIMB-style: the next ``n_next`` mixtures for the swarm to actually run.

    Samples around the currently best-predicted mixtures with a concentration that grows with
    ``round_idx`` (the search space shrinks each round) and picks by ``mean - explore·std``; picks
    are kept at least ``min_distance`` (max-abs) apart from each other and from ``existing`` runs.
    ``explore`` is 0 by default: with few runs the std is largest at the simplex corners, and
    optimism there spent whole rounds on corner mixtures in our synthetic tests.

    ``anchor``, when given, is the mixture the proposer would ship now (its optimum before the
    do-no-harm share). Half the batch (rounded up) is then that mixture and its neighbours: the fit's
    own best region often lies outside what the proposer may ship (past the trust region, at a corner
    its KL term pulls away from), and a batch spent only there never checks the mixture that ships.
    The other half still samples the fit's best region, which widens the trust region for the next fit.
    """
    cfg = cfg or ProposeConfig(n_samples=20_000)
    if domain_tokens is None or tokens_per_run is None:
        cfg = replace(cfg, max_epochs=None)  # no budget to cap repetition at
    domains = fit.domains
    p = normalize_prior(fit.prior_array() if prior is None else prior, "prior")
    lo, hi = bounds_for(domains, cfg, domain_tokens, tokens_per_run)
    rng = np.random.default_rng(cfg.seed + 1000 * round_idx)
    conc = 10.0 * len(p) * (2.0**round_idx)
    taken = (
        np.zeros((0, len(p))) if existing is None else np.atleast_2d(np.asarray(existing, dtype=np.float64))
    )
    chosen: list[np.ndarray] = []
    if anchor is not None:
        a = project_capped(normalize_prior(np.asarray(anchor, dtype=np.float64), "anchor")[None, :], lo, hi)
        # the anchor itself first (unless a run already sits there), then neighbours in random order:
        # picked by the fit's mean they would all lean the one way the other half already goes, while
        # the refit needs the loss around the anchor in every direction to confirm or move it
        chosen, taken = _pick_distinct(None, a, 0.0, taken, min_distance, 1)
        near = _around(rng, a, max(64, 8 * n_next), conc, lo, hi)
        more, taken = _pick_distinct(None, near, 0.0, taken, min_distance, (n_next + 1) // 2 - len(chosen))
        chosen += more
    pool = _samples(rng, p, cfg.n_samples // 2, cfg, lo, hi)
    m, _ = fit.predictor.predict_with_std(pool)
    centers = pool[np.argsort(m)[: max(8, n_next)]]
    cand = np.vstack([pool, _around(rng, centers, cfg.n_samples // 2, conc, lo, hi)])
    rest, _ = _pick_distinct(fit, cand, explore, taken, min_distance, n_next - len(chosen))
    chosen += rest
    if len(chosen) < n_next:
        raise MoemixError(
            f"search: only {len(chosen)} distinct candidates for {n_next} runs; lower min_distance"
        )
    out = np.array(chosen)
    return out / out.sum(axis=1, keepdims=True)


def _pick_distinct(
    fit: FitResult | None, cand: np.ndarray, explore: float, taken: np.ndarray, min_distance: float, n: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to ``n`` of ``cand``, best by ``mean - explore·std`` first (in their given order without a
    ``fit``), each at least ``min_distance`` (max-abs) from ``taken`` and from each other; the picks,
    and ``taken`` with them added."""
    order = np.arange(len(cand))
    if fit is not None:
        mean, std = fit.predictor.predict_with_std(cand)
        order = np.argsort(mean - explore * (std if std is not None else 0.0))
    chosen: list[np.ndarray] = []
    for i in order:
        if len(chosen) >= n:
            break
        c = cand[i]
        if taken.shape[0] and np.min(np.max(np.abs(taken - c), axis=1)) < min_distance:
            continue
        chosen.append(c)
        taken = np.vstack([taken, c[None, :]])
    return chosen, taken


def _best_seen(fit: FitResult) -> tuple[float, str] | None:
    """The best loss the proxies support, at the scale the fit predicts for. A predictor of final proxy
    losses is compared with the best proxy measured; one that predicts past the proxies (more tokens, a
    larger model) with its own prediction for the best mixture they trained, since at that scale every
    prediction sits below every proxy's measured loss and only a mixture beyond the swarm's is news."""
    scale = getattr(fit.predictor, "effective_scale", None)
    if callable(scale) and float(scale()) != 1.0:
        if fit.observed_weights is None:
            return None
        seen = float(np.min(fit.predictor.predict(np.asarray(fit.observed_weights, dtype=np.float64))))
        return seen, "the prediction for every mixture the proxies trained"
    if fit.best_observed is None:
        return None
    return float(fit.best_observed), "the best observed proxy"


def _model_size_left_out(fit: FitResult) -> float | None:
    """The pretrain model's active parameters over the proxies' when the fit extrapolates to the
    pretraining budget in tokens but not in model size (no scale check measured the size speed-up);
    None otherwise."""
    ratio = (getattr(fit.predictor, "params", None) or {}).get("target_params")
    if ratio is None or float(ratio) <= 1.0 or getattr(fit.predictor, "size_exponent", None) is not None:
        return None
    return float(ratio)


def _at_upper_bound(proposal: Proposal, key: str) -> list[str]:
    """``"domain bound"`` for each domain the search held at its upper bound ``constraints[key]``.

    The search's own optimum counts too when the guard shipped a share of the step to it: kept 0.99 of
    the way, the shipped weight sits just inside a bound that still decided where the step went.
    """
    caps = proposal.constraints.get(key) or {}
    dec = proposal.decision
    optimum = dec.optimum if dec is not None and dec.action != "baseline" and dec.optimum else {}
    return [
        f"{n} {caps[n]:.3g}"
        for n, w in zip(proposal.domains, proposal.weights)
        if n in caps and caps[n] < 1.0 and max(w, optimum.get(n, 0.0)) >= caps[n] - 1e-4
    ]


def proposal_to_doc(
    proposal: Proposal,
    fit: FitResult,
    domain_tokens: np.ndarray | list[int] | None = None,
    domains_fingerprint: str | None = None,
    target_description: str | None = None,
    plots: dict[str, str] | None = None,
    scale_transfer: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    rounds_run: int | None = None,
) -> MixtureDoc:
    """``rounds_run``: how many swarm rounds the fit saw (names the setting that trains one more)."""
    tokens = domain_tokens if domain_tokens is not None else fit.domain_tokens
    doms = [
        DomainWeight(name=n, weight=float(w), tokens=None if tokens is None else int(tokens[i]))
        for i, (n, w) in enumerate(zip(proposal.domains, proposal.weights))
    ]
    cv = {k: fit.cv.get(k) for k in ("spearman", "pearson", "mae", "n", "folds") if k in fit.cv}
    st = scale_transfer if scale_transfer is not None else fit.scale_transfer
    if st is not None and st.get("warning"):
        notes = [*(notes or []), f"scale transfer: {st['warning']}"]
    notes = list(notes or [])
    if fit.cv.get("kind") == "oof_of_selected_ensemble":
        notes.append(
            "cv_spearman is the out-of-fold score the auto ensemble was selected on (mildly optimistic)"
        )
    best_seen = _best_seen(fit)
    if best_seen is not None and proposal.predicted_loss < best_seen[0] - 1e-9:
        notes.append(
            f"predicted loss {proposal.predicted_loss:.4f} is below {best_seen[1]} "
            f"({best_seen[0]:.4f}): an extrapolation, treat it as optimistic"
        )
    size_ratio = _model_size_left_out(fit)
    if size_ratio is not None:
        # on six benchmark targets the demo's pretrain model (2.4x the proxies' active parameters) came
        # in 0.19-0.61 nats below these levels, uniform and chosen mixtures alike; the gains between
        # them were off by less (docs/benchmarks/mixture_quality.md, session 22)
        notes.append(
            f"predicted losses are for the proxies' model size at the pretraining token budget: the "
            f"pretrain model has {size_ratio:.3g}x their active parameters, and no scale check "
            "(proxies.scale_check.n_mixtures) measured how much faster it learns, so expect it to reach "
            "lower losses than these; the fit ranks mixtures, and the do-no-harm guard weighs the "
            "differences between them"
        )
    at_edge = _at_upper_bound(proposal, "trust_region_max_weight")
    if at_edge:
        more = "one more proxies.rounds" if rounds_run is None else f"proxies.rounds: {rounds_run + 1}"
        notes.append(
            "held at the edge of the region the proxies explored (max_weight_above_observed): "
            + ", ".join(at_edge)
            + f"; more proxy runs there would tell whether to go further ({more} trains a batch around "
            "this optimum)"
        )
    at_cap = _at_upper_bound(proposal, "epoch_cap_max_weight")
    if at_cap:
        notes.append(
            f"held at max_epochs {proposal.constraints['max_epochs']:g} passes over its tokens at the "
            f"{proposal.constraints['target_tokens']:,}-token budget: "
            + ", ".join(at_cap)
            + "; no proxy saw more repetition, more of these domains' text would let them have more"
        )
    dec = proposal.decision
    if dec is not None and dec.action != "optimum":
        notes.append(f"do-no-harm guard: {dec.reason}")
    if fit.skipped and any(fit.skipped.values()):
        notes.append("skipped runs: " + ", ".join(f"{k}={v}" for k, v in fit.skipped.items() if v))
    return MixtureDoc(
        domains=doms,
        target=TargetInfo(name=fit.target.name, description=target_description),
        predicted_target_loss=proposal.predicted_loss,
        baselines=Baselines(
            uniform=proposal.baselines.get("uniform"), natural=proposal.baselines.get("natural")
        ),
        predictor=str(fit.cv.get("predictor") or fit.predictor.label),
        cv_spearman=fit.cv.get("spearman"),
        n_proxies=int(fit.n_rows) - int(fit.skipped.get("other_scale", 0)),  # base-scale proxies only
        n_failed_proxies=int(fit.n_failed),
        domains_fingerprint=domains_fingerprint,
        cv=cv,
        plots=plots or None,
        proposer=ProposerInfo(
            name=proposal.method, constraints=proposal.constraints, why=proposal.method_reason
        ),
        scale_transfer=None if st is None else ScaleTransfer(**st),
        notes=notes or None,
        decision=proposal.decision,
    )
