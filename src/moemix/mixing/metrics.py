"""Ranking and error metrics used for CV and reports.

Spearman is the headline: the proposer only needs the predictor to *order* mixtures correctly.
"""

from __future__ import annotations

import numpy as np


def _safe(fn, a: np.ndarray, b: np.ndarray) -> float | None:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # undefined for constant predictions (e.g. an under-fit tree on tiny n)
    v = float(fn(a, b)[0])
    return v if np.isfinite(v) else None


def spearman(pred: np.ndarray, actual: np.ndarray) -> float | None:
    from scipy.stats import spearmanr  # lazy: scipy.stats takes ~1 s, and loading a config reaches here

    return _safe(spearmanr, pred, actual)


def pearson(pred: np.ndarray, actual: np.ndarray) -> float | None:
    from scipy.stats import pearsonr

    return _safe(pearsonr, pred, actual)


def mae(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(actual))))


def all_metrics(pred: np.ndarray, actual: np.ndarray) -> dict[str, float | None]:
    return {"spearman": spearman(pred, actual), "pearson": pearson(pred, actual), "mae": mae(pred, actual)}


def kfold_indices(n: int, k: int, seed: int) -> list[np.ndarray]:
    """Shuffled folds (test indices); k is clipped to n so leave-one-out is the limit."""
    k = max(2, min(int(k), n))
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]
