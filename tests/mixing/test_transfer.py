from __future__ import annotations

import numpy as np
import pandas as pd
from mixing_synth import runs_table, weight_cols

from moemix.mixing.transfer import scale_transfer


def _with_large(df: pd.DataFrame, idx: list[int], flip: bool) -> pd.DataFrame:
    large = df.iloc[idx].copy()
    large["scale"] = "large"
    y = large["target"].to_numpy()
    large["target"] = (-y if flip else y - 0.5) + np.linspace(0, 1e-4, len(y))
    return pd.concat([df, large], ignore_index=True)


def test_scale_transfer_agrees_and_warns():
    df = runs_table(20, seed=3)
    assert scale_transfer(df, "target", weight_cols()) is None
    good = scale_transfer(_with_large(df, [2, 5, 7, 9, 11], flip=False), "target", weight_cols())
    assert good["n"] == 5 and good["spearman"] > 0.99 and good["warning"] is None
    bad = scale_transfer(_with_large(df, [2, 5, 7, 9, 11], flip=True), "target", weight_cols())
    assert bad["spearman"] < 0 and "transfer poorly" in bad["warning"]
    few = scale_transfer(_with_large(df, [2], flip=False), "target", weight_cols())
    assert few["spearman"] is None and few["n"] == 1 and "no rank correlation" in few["warning"]


def test_fit_records_transfer_and_mixture_carries_it(tmp_path):
    from moemix.mixing.fit import FitConfig, fit_runs
    from moemix.mixing.propose import ProposeConfig, proposal_to_doc, propose

    df = _with_large(runs_table(20, seed=3), [2, 5, 7, 9, 11], flip=True)
    res = fit_runs(df, "target", weight_cols(), FitConfig(predictor="linear", plots=False), tmp_path)
    assert res.skipped["other_scale"] == 5 and res.scale_transfer["n"] == 5
    doc = proposal_to_doc(propose(res, None, ProposeConfig(n_samples=500)), res)
    assert doc.scale_transfer.spearman < 0 and any("transfer poorly" in n for n in doc.notes)
