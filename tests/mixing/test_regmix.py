"""Real RegMix proxy runs: auto on 64 training runs must rank the 256 held-out runs well."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moemix.mixing.metrics import spearman
from moemix.mixing.predictors import make_predictor

TARGET = "metric/the_pile_pile_cc_val_loss"


def _load(d, split):
    m = pd.read_csv(d / f"{split}_mixture_1m.csv")
    loss = pd.read_csv(d / f"{split}_pile_loss_1m.csv")
    df = m.merge(loss, on="index")
    W = df[[c for c in m.columns if c != "index"]].to_numpy()
    return W / W.sum(axis=1, keepdims=True), df[TARGET].to_numpy()


def test_auto_on_64_runs_beats_regmix_lightgbm(regmix_dir):
    Xtr, ytr = _load(regmix_dir, "train")
    Xte, yte = _load(regmix_dir, "test")
    auto = make_predictor("auto", seed=0).fit(Xtr[:64], ytr[:64])
    rho = spearman(auto.predict(Xte), yte)
    base = make_predictor("lightgbm", regmix=True).fit(Xtr[:64], ytr[:64])
    rho_base = spearman(base.predict(Xte), yte)
    assert rho >= 0.95, rho
    assert rho > rho_base + 0.03, (rho, rho_base)
    assert np.isfinite(auto.predict(Xte)).all()
