"""PNG reports (matplotlib, Agg backend: no display on pipeline workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moemix._io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:  # matplotlib objects
    """Write a figure atomically as PNG and free it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_pred_vs_actual(
    actual: np.ndarray, predicted: np.ndarray, path: str | Path, title: str, metrics: dict | None = None
) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.5), dpi=110)
    ax.scatter(actual, predicted, s=12, alpha=0.7)
    lo = float(min(np.min(actual), np.min(predicted)))
    hi = float(max(np.max(actual), np.max(predicted)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("actual loss")
    ax.set_ylabel("predicted loss (out-of-fold)")
    if metrics:
        txt = "  ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float)))
        ax.set_title(f"{title}\n{txt}", fontsize=8)
    else:
        ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def plot_mixture(
    domains: list[str],
    chosen: np.ndarray,
    natural: np.ndarray,
    path: str | Path,
    title: str = "chosen mixture",
) -> Path:
    plt = _plt()
    d = len(domains)
    uniform = np.full(d, 1.0 / d)
    x = np.arange(d)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * d + 2), 3.8), dpi=110)
    w = 0.27
    ax.bar(x - w, chosen, w, label="chosen")
    ax.bar(x, natural, w, label="natural")
    ax.bar(x + w, uniform, w, label="uniform")
    ax.set_xticks(x)
    ax.set_xticklabels(domains, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("weight")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
