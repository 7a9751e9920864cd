"""Synthetic runs tables with a known, RegMix-like loss surface (diminishing returns per domain)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moemix.mixing.sampling import SamplerConfig, sample_mixtures

DOMAINS = ["web", "code", "math", "books", "wiki"]
PRIOR = np.array([0.4, 0.25, 0.1, 0.15, 0.1])
COEF = np.array([0.6, 0.25, 0.1, 0.2, 0.3])


def true_loss(W: np.ndarray) -> np.ndarray:
    return 2.5 + (COEF * (1 - np.sqrt(W))).sum(axis=1) + 0.15 * np.exp(-8 * W[:, 0])


def runs_table(n: int, seed: int = 0, noise: float = 0.005) -> pd.DataFrame:
    W = sample_mixtures(PRIOR, SamplerConfig(n_mixtures=n, max_epochs=None, min_weight=0.0), seed)
    rng = np.random.default_rng(seed)
    y = true_loss(W) + rng.normal(0, noise, n)
    df = pd.DataFrame(W, columns=[f"w/{d}" for d in DOMAINS])
    df.insert(0, "run_id", [f"r{i}" for i in range(n)])
    df.insert(1, "status", "ok")
    df.insert(2, "scale", "base")
    df["target"] = y
    for j, d in enumerate(DOMAINS):
        df[f"loss/{d}"] = 3 + COEF[j] * (1 - np.sqrt(W[:, j])) + rng.normal(0, noise, n)
    return df


def weight_cols() -> list[str]:
    return [f"w/{d}" for d in DOMAINS]
