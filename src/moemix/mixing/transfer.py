"""Scale-transfer check: do mixtures rank the same at the base proxy scale and a larger one?

The swarm may re-run a few mixtures with a larger proxy (``scale == "large"`` rows in the runs
table). If their ranking disagrees with the base proxies, the chosen mixture rests on a ranking
that does not transfer, and mixture.json says so. The swarm's report (``proxies.run``), the fit of a
runs table (``fit_runs``) and the pipeline's mixture.json all use the functions here.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

MIN_PAIRS = 3
# below this base-vs-large Spearman, mixture.json warns that the proxies' ranking may not transfer
WARN_BELOW = 0.8


def scale_agreement(
    df: pd.DataFrame, column: str = "target", weight_cols: list[str] | None = None
) -> dict[str, float]:
    """Spearman rank correlation of ``column`` between base and large runs of the same mixture.

    ``{"n", "spearman"}``: ``n`` mixtures ran at both scales; ``spearman`` is NaN below ``MIN_PAIRS``.
    Mixtures are matched on ``weight_cols`` (default: every ``w/`` column) rounded to 9 decimals.
    """
    from scipy.stats import spearmanr

    wcols = weight_cols if weight_cols is not None else [c for c in df.columns if c.startswith("w/")]
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    key = ok[wcols].round(9).astype(str).agg("|".join, axis=1)
    # a mixture trained under several seeds (the uniform one) counts once, at its seed-mean
    base = ok[ok["scale"] == "base"].assign(_k=key).groupby("_k")[[column]].mean()
    large = ok[ok["scale"] == "large"].assign(_k=key).groupby("_k")[[column]].mean()
    both = base.merge(large, left_index=True, right_index=True, suffixes=("_base", "_large"))
    n = len(both)
    if n < MIN_PAIRS:
        return {"n": n, "spearman": float("nan")}
    rho = spearmanr(both[f"{column}_base"], both[f"{column}_large"]).statistic
    return {"n": n, "spearman": float(rho)}


def transfer_summary(spearman: float | None, n: int) -> dict[str, Any]:
    """``{"spearman", "n", "warning"}`` as mixture.json reports an agreement: the warning is set when
    there is no correlation (too few shared mixtures) or it is below ``WARN_BELOW``."""
    rho = None if spearman is None or math.isnan(spearman) else float(spearman)
    warning = None
    if rho is None:
        warning = f"only {n} mixtures trained at both scales: no rank correlation"
    elif rho < WARN_BELOW:
        warning = (
            f"proxy rankings transfer poorly to the larger proxy (Spearman {rho:.2f} < {WARN_BELOW}); "
            "consider larger proxies"
        )
    return {"spearman": rho, "n": n, "warning": warning}


def has_large_runs(runs: pd.DataFrame) -> bool:
    """Whether the runs table holds a scale check (any ``scale == "large"`` row, failed or not)."""
    return "scale" in runs.columns and bool((runs["scale"] == "large").any())


def scale_transfer(runs: pd.DataFrame, target: str, weight_cols: list[str]) -> dict[str, Any] | None:
    """``transfer_summary`` of ``target``'s base-vs-large agreement; None without large runs."""
    if not has_large_runs(runs):
        return None
    agreement = scale_agreement(runs, target, weight_cols)
    return transfer_summary(agreement["spearman"], int(agreement["n"]))
