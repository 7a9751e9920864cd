"""Weights written with a few decimals (RegMix's released tables: 3) miss 1 by what rounding explains;
they are renormalised, while a row that is off by more is still an error naming the row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moemix.errors import MoemixError
from moemix.mixing.runs import mixtures_matrix, rounding_slack


def test_slack_is_half_a_unit_of_the_last_decimal_per_weight():
    W = np.array([[0.333, 0.333, 0.333], [0.25, 0.25, 0.5], [0.333333, 0.333333, 0.333334], [1 / 3] * 3])
    # 3, 2 and 6 decimals; full float precision has no rounding to explain
    np.testing.assert_allclose(rounding_slack(W), [1.5e-3, 1.5e-2, 1.5e-6, 0.0], rtol=1e-9)


def test_regmix_tables_load_without_a_tolerance_flag(regmix_dir):
    df = pd.read_csv(regmix_dir / "train_mixture_1m.csv")
    cols = [c for c in df.columns if c.startswith("train_")]
    sums = df[cols].to_numpy().sum(1)
    assert np.abs(sums - 1).max() > 1e-3  # the default tolerance alone would refuse this table
    W = mixtures_matrix(df, cols, "train_mixture_1m.csv")
    np.testing.assert_allclose(W.sum(1), 1.0)
    bad = df.copy()
    bad.loc[5, cols[0]] += 0.02  # more than 17 weights' rounding can explain (0.0085)
    with pytest.raises(MoemixError, match=r"train_mixture_1m.csv: weights in row 5 sum to"):
        mixtures_matrix(bad, cols, "train_mixture_1m.csv")
