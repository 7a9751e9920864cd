"""Reading and checking a runs table (weights -> losses) before anything is fitted.

The rule: anything that could silently produce a wrong fit is an error naming the file/column
(weights not summing to one, negative or NaN weights, infinite losses, unknown columns);
anything that is safe to drop (failed runs, runs at another proxy scale, NaN targets from a run
that died before eval) is skipped and *counted*, and the counts go into cv.json and mixture.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from moemix.errors import MoemixError
from moemix.mixing.config import DEFAULT_WEIGHTS_PREFIX

DEFAULT_TARGET = "target"


def read_table(path: str | Path) -> pd.DataFrame:
    """CSV or parquet, by suffix."""
    path = Path(path)
    if not path.exists():
        raise MoemixError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as e:  # any parser failure is a user-input problem
        raise MoemixError(
            f"{path}: cannot read table ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    raise MoemixError(f"{path}: unsupported table format {suffix!r} (use .csv or .parquet)")


def domain_name(col: str, prefix: str | None) -> str:
    if prefix and col.startswith(prefix):
        return col[len(prefix) :]
    return col[len(DEFAULT_WEIGHTS_PREFIX) :] if col.startswith(DEFAULT_WEIGHTS_PREFIX) else col


def resolve_weight_cols(
    df: pd.DataFrame,
    prefix: str | None = DEFAULT_WEIGHTS_PREFIX,
    cols: list[str] | None = None,
    where: str = "runs",
) -> list[str]:
    if cols:
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise MoemixError(f"{where}: weight column {missing[0]!r} not found")
        if len(set(cols)) != len(cols):
            raise MoemixError(f"{where}: weight columns listed twice")
        return list(cols)
    prefix = prefix or DEFAULT_WEIGHTS_PREFIX
    found = [c for c in df.columns if str(c).startswith(prefix)]
    if not found:
        raise MoemixError(
            f"{where}: no weight columns with prefix {prefix!r} (use --weights-prefix or --weights)"
        )
    return found


@dataclass
class TargetSpec:
    """Which loss the predictor models.

    combined: y = sum_i coef_i * column_i, one predictor. separate: one predictor per column,
    predictions combined with the same coefficients (each domain's loss has its own shape).
    """

    columns: list[str] = field(default_factory=lambda: [DEFAULT_TARGET])
    coefs: list[float] = field(default_factory=lambda: [1.0])
    mode: Literal["combined", "separate"] = "combined"

    @property
    def name(self) -> str:
        if len(self.columns) == 1 and self.coefs == [1.0]:
            return self.columns[0]
        return " + ".join(f"{c:g}*{col}" for c, col in zip(self.coefs, self.columns))


def parse_target(text: str, columns: list[str], mode: str = "combined", where: str = "runs") -> TargetSpec:
    """``COL`` | ``COL1:0.3,COL2:0.7`` (weighted sum) | ``PREFIX*`` (mean of every column with the prefix)."""
    if mode not in ("combined", "separate"):
        raise MoemixError(f"--target-mode: {mode!r} is not one of 'combined', 'separate'")
    text = text.strip()
    if not text:
        raise MoemixError(f"{where}: empty target")
    if text.endswith("*"):
        cols = [c for c in columns if str(c).startswith(text[:-1])]
        if not cols:
            raise MoemixError(f"{where}: no target columns match {text!r}")
        return TargetSpec(cols, [1.0 / len(cols)] * len(cols), mode)  # type: ignore[arg-type]
    if text in columns:
        return TargetSpec([text], [1.0], mode)  # type: ignore[arg-type]
    cols, coefs = [], []
    for part in text.split(","):
        name, sep, coef = part.strip().rpartition(":")
        if not sep:
            name, coef = part.strip(), "1"
        try:
            c = float(coef)
        except ValueError:
            raise MoemixError(
                f"{where}: bad target weight {coef!r} in {text!r} (use COL:WEIGHT,...)"
            ) from None
        if not math.isfinite(c):
            raise MoemixError(f"{where}: target weight for {name!r} is not finite")
        if name not in columns:
            raise MoemixError(f"{where}: target column {name!r} not found")
        cols.append(name)
        coefs.append(c)
    return TargetSpec(cols, coefs, mode)  # type: ignore[arg-type]


@dataclass
class PreparedRuns:
    X: np.ndarray  # [n, D] weights, rows sum to 1 exactly
    Y: np.ndarray  # [n, k] target columns
    y: np.ndarray  # [n] combined target
    domains: list[str]
    weight_cols: list[str]
    target: TargetSpec
    n_rows: int
    skipped: dict[str, int]
    run_ids: list[str] | None = None

    @property
    def n_used(self) -> int:
        return len(self.y)

    @property
    def n_failed(self) -> int:
        return int(self.skipped.get("failed", 0))


def prepare_runs(
    df: pd.DataFrame,
    target: TargetSpec,
    weight_cols: list[str],
    where: str = "runs",
    weight_sum_tol: float = 1e-3,
    prefix: str | None = DEFAULT_WEIGHTS_PREFIX,
    min_runs: int = 4,
) -> PreparedRuns:
    for c in target.columns:
        if c not in df.columns:
            raise MoemixError(f"{where}: target column {c!r} not found")
        if c in weight_cols:
            raise MoemixError(f"{where}: column {c!r} is both a weight and the target")
    n_rows = len(df)
    keep = np.ones(n_rows, dtype=bool)
    skipped: dict[str, int] = {}
    # scale first, so "failed" counts failed *base* proxies (what mixture.json reports)
    if "scale" in df.columns:
        other = (df["scale"].astype(str) != "base").to_numpy()
        skipped["other_scale"] = int(other.sum())
        keep &= ~other
    if "status" in df.columns:
        failed = df["status"].astype(str).str.lower().ne("ok").to_numpy() & keep
        skipped["failed"] = int(failed.sum())
        keep &= ~failed

    try:
        Yall = df[target.columns].to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise MoemixError(f"{where}: target column(s) {target.columns} are not numeric") from None
    nan_t = np.isnan(Yall).any(axis=1) & keep
    skipped["nan_target"] = int(nan_t.sum())
    keep &= ~nan_t
    inf_rows = np.nonzero(np.isinf(Yall).any(axis=1) & keep)[0]
    if inf_rows.size:
        raise MoemixError(
            f"{where}: row {int(inf_rows[0])} has an infinite loss in {target.columns} "
            f"(mark diverged runs status=failed)"
        )

    Wk = _normalized_weights(
        _weights(df, weight_cols, where)[keep], np.nonzero(keep)[0], weight_cols, where, weight_sum_tol
    )
    if len(Wk) < min_runs:
        raise MoemixError(
            f"{where}: only {len(Wk)} usable runs after skipping {skipped}; need at least {min_runs}"
        )
    Y = Yall[keep]
    y = Y @ np.asarray(target.coefs, dtype=np.float64)
    run_ids = df["run_id"].astype(str).to_numpy()[keep].tolist() if "run_id" in df.columns else None
    return PreparedRuns(
        X=Wk,
        Y=Y,
        y=y,
        domains=[domain_name(c, prefix) for c in weight_cols],
        weight_cols=list(weight_cols),
        target=target,
        n_rows=n_rows,
        skipped={k: v for k, v in skipped.items()},
        run_ids=run_ids,
    )


def mixtures_matrix(
    df: pd.DataFrame, weight_cols: list[str], where: str, weight_sum_tol: float = 1e-3
) -> np.ndarray:
    """Weights for prediction: same checks as for fitting, but no row may be skipped."""
    missing = [c for c in weight_cols if c not in df.columns]
    if missing:
        raise MoemixError(f"{where}: weight column {missing[0]!r} (used at fit time) not found")
    W = _weights(df, weight_cols, where)
    return _normalized_weights(W, np.arange(len(W)), weight_cols, where, weight_sum_tol)


def _weights(df: pd.DataFrame, weight_cols: list[str], where: str) -> np.ndarray:
    try:
        return df[weight_cols].to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise MoemixError(f"{where}: weight columns are not numeric") from None


def _normalized_weights(
    W: np.ndarray, rows: np.ndarray, weight_cols: list[str], where: str, weight_sum_tol: float
) -> np.ndarray:
    """``W`` over its row sums, once every weight is finite and >= 0 and every row sums to 1 within
    ``weight_sum_tol``; errors name the table row (``rows[i]`` for row i of ``W``)."""
    bad = ~np.isfinite(W)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise MoemixError(f"{where}: row {int(rows[i])} has a non-finite weight in {weight_cols[j]!r}")
    if (W < 0).any():
        i, j = np.argwhere(W < 0)[0]
        raise MoemixError(f"{where}: row {int(rows[i])} has a negative weight in {weight_cols[j]!r}")
    sums = W.sum(axis=1)
    tol = np.maximum(weight_sum_tol, rounding_slack(W))
    off = np.nonzero(np.abs(sums - 1.0) > tol)[0]
    if off.size:
        i = off[0]
        raise MoemixError(
            f"{where}: weights in row {int(rows[i])} sum to {sums[i]:.6g}, not 1 "
            f"(tolerance {tol[i]:g}; {off.size} such rows)"
        )
    return W / sums[:, None]


def rounding_slack(W: np.ndarray, max_decimals: int = 6) -> np.ndarray:
    """Per row, how far from 1 its sum may be from rounding alone: weights written with ``p`` decimals
    (RegMix's released tables use 3) are each off by up to half a unit of the ``p``-th decimal, so a row
    of ``D`` of them may miss 1 by ``D / 2 * 10**-p``. Rows with more than ``max_decimals`` decimals get
    no slack (0)."""
    slack = np.zeros(len(W))
    undecided = np.ones(len(W), dtype=bool)
    for p in range(max_decimals + 1):
        scaled = W * 10.0**p
        exact = np.all(np.abs(scaled - np.round(scaled)) <= 1e-6, axis=1)  # weights <= 1: float error ~1e-10
        hit = undecided & exact
        slack[hit] = W.shape[1] / 2 * 10.0**-p
        undecided &= ~exact
    return slack
