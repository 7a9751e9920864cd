"""Scale-transfer check: do mixtures rank the same at the base proxy scale and a larger one?

The swarm may re-run a few mixtures with a larger proxy (``scale == "large"`` rows in the runs
table). If their ranking disagrees with the base proxies, the chosen mixture rests on a ranking
that does not transfer, and mixture.json says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moemix.mixing.metrics import spearman

MIN_PAIRS = 3
WARN_BELOW = 0.7


def scale_transfer(runs: pd.DataFrame, target: str, weight_cols: list[str], decimals: int = 6) -> dict | None:
    """``{"spearman", "n", "warning"}`` over mixtures run at both scales; None without large runs."""
    if "scale" not in runs.columns or target not in runs.columns:
        return None
    ok = runs["status"].astype(str).eq("ok") if "status" in runs.columns else pd.Series(True, index=runs.index)
    df = runs[ok & np.isfinite(pd.to_numeric(runs[target], errors="coerce"))]
    key = df[weight_cols].to_numpy(dtype=np.float64).round(decimals)
    keys = [tuple(k) for k in key]
    base: dict[tuple, list[float]] = {}
    large: dict[tuple, list[float]] = {}
    for k, scale, y in zip(keys, df["scale"].astype(str), df[target].astype(float)):
        (large if scale == "large" else base if scale == "base" else {}).setdefault(k, []).append(y)
    common = [k for k in large if k in base]
    if not large:
        return None
    n = len(common)
    if n < MIN_PAIRS:
        return {"spearman": None, "n": n,
                "warning": f"only {n} mixtures were run at both scales (need {MIN_PAIRS}); transfer unchecked"}
    a = np.array([np.mean(base[k]) for k in common])
    b = np.array([np.mean(large[k]) for k in common])
    rho = spearman(a, b)
    warning = None
    if rho is None or rho < WARN_BELOW:
        warning = (f"base and large proxies rank {n} shared mixtures differently (Spearman "
                   f"{'n/a' if rho is None else f'{rho:.2f}'} < {WARN_BELOW}); the proposal may not transfer")
    return {"spearman": rho, "n": n, "warning": warning}
