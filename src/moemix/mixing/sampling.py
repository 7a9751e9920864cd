"""Mixture sampling for the proxy swarm (RegMix-style) and for simulation-based proposers.

Why Dirichlet around a *tempered* prior with a *spread* of concentrations: RegMix showed that
the swarm must cover both near-prior mixtures (where the answer usually lies) and sparse,
extreme ones (so the predictor learns what happens when a domain is dropped). A log-uniform
concentration scale gives both in one batch. Rows 0 and 1 are always the uniform and natural
mixtures so every swarm has the two reference baselines the report compares against.

Token caps: a proxy that consumes ``tokens_per_run`` tokens must not see any domain more than
``max_epochs`` times, i.e. ``w_d * tokens_per_run <= max_epochs * tokens_d``. Samples are projected
onto the capped simplex (excess mass moved proportionally onto uncapped domains); the uniform
and natural reference rows are projected the same way, so they are the closest feasible
mixtures to uniform / natural.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from moemix.errors import MoemixError, check_config


@dataclass
class SamplerConfig:
    n_mixtures: int = 64
    method: Literal["dirichlet", "space_filling"] = "dirichlet"
    # prior used for sampling is prior**temperature (renormalised): <1 flattens towards uniform
    temperature: float = 0.5
    # per-sample Dirichlet concentration scale, log-uniform in [min, max]; alpha = scale * D * tempered
    concentration_min: float = 0.1
    concentration_max: float = 5.0
    # weights below this are zeroed and the row renormalised (RegMix sparsifies its mixtures)
    min_weight: float = 0.002
    # epochs cap per domain given the tokens one run consumes (None: uncapped)
    max_epochs: float | None = 4.0
    # two rows closer than this (max abs difference) count as duplicates
    dedup_tol: float = 1e-3
    include_references: bool = True

    def validate(self) -> None:
        if self.n_mixtures < 1:
            raise ValueError("n_mixtures must be >= 1")
        if self.method not in ("dirichlet", "space_filling"):
            raise ValueError(f"method must be 'dirichlet' or 'space_filling', got {self.method!r}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.concentration_min <= self.concentration_max:
            raise ValueError("need 0 < concentration_min <= concentration_max")
        if not 0 <= self.min_weight < 1:
            raise ValueError("min_weight must be in [0, 1)")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError("max_epochs must be > 0 or null")
        if self.dedup_tol < 0:
            raise ValueError("dedup_tol must be >= 0")


SAMPLE_BLOCK = 64  # candidate mixtures drawn per attempt (see sample_mixtures)


def normalize_prior(prior: np.ndarray, where: str = "prior") -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64).ravel()
    if p.size == 0:
        raise MoemixError(f"{where}: no domains")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise MoemixError(f"{where}: weights must be finite, >= 0 and not all zero")
    return p / p.sum()


def tempered(prior: np.ndarray, temperature: float) -> np.ndarray:
    p = normalize_prior(prior)
    with np.errstate(divide="ignore"):
        t = np.where(p > 0, p ** float(temperature), 0.0)
    return t / t.sum()


def token_caps(
    domain_tokens: np.ndarray | None,
    tokens_per_run: int | None,
    max_epochs: float | None,
    n_domains: int,
    domain_names: list[str] | None = None,
) -> np.ndarray:
    """Upper bound on each domain's weight from the epochs cap; raises if no mixture fits."""
    caps = np.ones(n_domains)
    if domain_tokens is None or tokens_per_run is None or max_epochs is None:
        return caps
    tok = np.asarray(domain_tokens, dtype=np.float64).ravel()
    if tok.size != n_domains:
        raise MoemixError(f"domain_tokens: has {tok.size} entries, expected {n_domains}")
    if np.any(tok < 0) or not np.all(np.isfinite(tok)):
        raise MoemixError("domain_tokens: must be finite and >= 0")
    if tokens_per_run <= 0:
        raise MoemixError("tokens_per_run: must be > 0")
    caps = np.minimum(1.0, max_epochs * tok / float(tokens_per_run))
    if caps.sum() < 1.0 - 1e-12:
        names = domain_names or [f"domain {i}" for i in range(n_domains)]
        worst = int(np.argmin(caps))
        raise MoemixError(
            f"max_epochs={max_epochs}: {tokens_per_run} tokens per run need more data than all domains hold "
            f"(caps sum to {caps.sum():.3f} < 1; most limiting domain {names[worst]!r} allows weight "
            f"{caps[worst]:.4g})"
        )
    return caps


def project_capped(w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Nearest-in-spirit feasible mixture: clip to [lo, hi] and move the surplus/deficit proportionally.

    Works row-wise on a 2-D array. Proportional redistribution keeps zero weights at zero where
    possible (so sparse samples stay sparse), falling back to spreading over free room.
    """
    w = np.atleast_2d(np.asarray(w, dtype=np.float64)).copy()
    lo = np.broadcast_to(lo, w.shape[1:])
    hi = np.broadcast_to(hi, w.shape[1:])
    w = w / w.sum(axis=1, keepdims=True)
    for _ in range(100):
        w = np.clip(w, lo, hi)
        gap = 1.0 - w.sum(axis=1)  # >0: need to add mass, <0: need to remove
        if np.all(np.abs(gap) < 1e-12):
            break
        for i in np.nonzero(np.abs(gap) >= 1e-12)[0]:
            g = gap[i]
            room = (hi - w[i]) if g > 0 else (w[i] - lo)
            free = room > 1e-15
            if not free.any():
                continue
            base = np.where(free, w[i] if g < 0 else w[i] * (room > 0), 0.0)
            if base[free].sum() <= 1e-15:
                base = np.where(free, room, 0.0)
            w[i] += g * base / base.sum()
    return w


def sparsify(w: np.ndarray, min_weight: float) -> np.ndarray:
    """Rows with weights below ``min_weight`` zeroed and renormalised (a row never becomes all zero)."""
    if min_weight <= 0:
        return w
    out = np.where(w < min_weight, 0.0, w)
    s = out.sum(axis=1, keepdims=True)
    bad = s[:, 0] <= 0
    out[bad] = w[bad]  # never zero a whole row
    return out / out.sum(axis=1, keepdims=True)


def dirichlet_batch(rng: np.random.Generator, base: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Dirichlet via gammas; tiny alphas underflow to all-zero rows, which are redrawn."""
    alpha = np.maximum(scales[:, None] * base[None, :] * base.size, 1e-6)
    out = np.empty_like(alpha)
    todo = np.arange(len(alpha))
    for _ in range(50):
        g = rng.gamma(alpha[todo])
        s = g.sum(axis=1)
        ok = s > 0
        out[todo[ok]] = g[ok] / s[ok, None]
        todo = todo[~ok]
        if todo.size == 0:
            break
    if todo.size:
        out[todo] = base
    return out


def _space_filling_batch(
    rng: np.random.Generator, base: np.ndarray, n: int, cfg: SamplerConfig
) -> np.ndarray:
    """Scrambled Sobol points pushed through the Dirichlet inverse CDF (gamma ppf per coordinate).

    The extra Sobol dimension picks the concentration, so coverage is low-discrepancy in both the
    direction and the sharpness of the mixtures.
    """
    from scipy.stats import gamma, qmc

    d = base.size
    sob = qmc.Sobol(d=d + 1, scramble=True, seed=rng)
    m = int(np.ceil(np.log2(max(n, 2))))
    u = sob.random_base2(m)[:n]
    u = np.clip(u, 1e-9, 1 - 1e-9)
    lo, hi = np.log(cfg.concentration_min), np.log(cfg.concentration_max)
    scales = np.exp(lo + (hi - lo) * u[:, -1])
    alpha = np.maximum(scales[:, None] * base[None, :] * d, 1e-6)
    g = gamma.ppf(u[:, :d], alpha)
    s = g.sum(axis=1, keepdims=True)
    g = np.where(s > 0, g / np.where(s > 0, s, 1.0), base[None, :])
    return g


def _dedup_append(rows: list[np.ndarray], cand: np.ndarray, tol: float, limit: int) -> None:
    existing = np.array(rows) if rows else np.zeros((0, cand.shape[1]))
    for c in cand:
        if len(rows) >= limit:
            return
        if existing.shape[0] and np.min(np.max(np.abs(existing - c), axis=1)) <= tol:
            continue
        rows.append(c)
        existing = np.vstack([existing, c[None, :]])


def sample_mixtures(
    prior: np.ndarray,
    cfg: SamplerConfig,
    seed: int,
    domain_tokens: np.ndarray | None = None,
    tokens_per_run: int | None = None,
    domain_names: list[str] | None = None,
) -> np.ndarray:
    """``cfg.n_mixtures`` mixtures, shape [n, D]: row 0 uniform, row 1 natural (= prior), then samples.

    ``prior`` is the natural (token-proportional) distribution; sampling happens around
    ``prior ** temperature``. Rows respect the token caps (see module docstring) and
    ``cfg.min_weight`` for sampled rows; reference rows are only projected onto the caps.
    """
    check_config(cfg, "sampler config")
    p = normalize_prior(prior)
    d = p.size
    caps = token_caps(domain_tokens, tokens_per_run, cfg.max_epochs, d, domain_names)
    lo = np.zeros(d)
    rng = np.random.default_rng(seed)
    base = tempered(p, cfg.temperature)

    rows: list[np.ndarray] = []
    if cfg.include_references:
        refs = project_capped(np.vstack([np.full(d, 1.0 / d), p]), lo, caps)
        for r in refs[: cfg.n_mixtures]:
            rows.append(r)  # references are kept even if they coincide (e.g. a uniform prior)

    attempts = 0
    while len(rows) < cfg.n_mixtures and attempts < 200:
        attempts += 1
        # candidates come in blocks of a fixed size, whatever n_mixtures is, so a swarm grown from n to
        # n' > n mixtures starts with the same n (their proxies are reused, not retrained)
        batch = SAMPLE_BLOCK
        if cfg.method == "space_filling":
            cand = _space_filling_batch(rng, base, batch, cfg)
        else:
            lo_c, hi_c = np.log(cfg.concentration_min), np.log(cfg.concentration_max)
            scales = np.exp(rng.uniform(lo_c, hi_c, size=batch))
            cand = dirichlet_batch(rng, base, scales)
        cand = sparsify(cand, cfg.min_weight)
        cand = project_capped(cand, lo, caps)
        _dedup_append(rows, cand, cfg.dedup_tol, cfg.n_mixtures)
    if len(rows) < cfg.n_mixtures:
        raise MoemixError(
            f"sampler: could only draw {len(rows)} distinct mixtures of {cfg.n_mixtures} "
            f"(lower dedup_tol or widen the concentration range)"
        )
    out = np.array(rows, dtype=np.float64)
    out /= out.sum(axis=1, keepdims=True)
    return out
