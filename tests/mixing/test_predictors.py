from __future__ import annotations

import numpy as np
import pytest
from mixing_synth import runs_table, true_loss, weight_cols

from moemix.mixing.metrics import spearman
from moemix.mixing.predictors import Predictor, load_predictor, make_predictor, save_predictor
from moemix.mixing.predictors.base import registry

FAST = {
    "linear": {"features": "sqrt"},
    "gp": {"features": "sqrt", "n_restarts": 0},
    "lightgbm": {"n_estimators": 200, "learning_rate": 0.05},
    "loglinear": {"n_restarts": 2},
    "dml": {"n_restarts": 2},
}
# the predictors with a predictive std; the others must say they have none (None), not a made-up one
HAS_STD = {"linear", "gp"}


@pytest.fixture(scope="module")
def data():
    tr, te = runs_table(48, seed=1), runs_table(200, seed=2)
    return tr[weight_cols()].to_numpy(), tr["target"].to_numpy(), te[weight_cols()].to_numpy()


@pytest.mark.parametrize("name", sorted(FAST))
def test_predictor_ranks_and_roundtrips(name, data, tmp_path):
    X, y, Xte = data
    p = make_predictor(name, **FAST[name]).fit(X, y)
    pred = p.predict(Xte)
    rho = spearman(pred, true_loss(Xte))
    floor = {"linear": 0.97, "gp": 0.95, "lightgbm": 0.7, "loglinear": 0.8, "dml": 0.8}[name]
    assert rho is not None and rho > floor, (name, rho)
    save_predictor(p, tmp_path / "p.json")
    q = load_predictor(tmp_path / "p.json")
    p.save(tmp_path / "p2.json")
    np.testing.assert_allclose(Predictor.load(tmp_path / "p2.json").predict(Xte), pred, atol=1e-10)
    np.testing.assert_allclose(q.predict(Xte), pred, rtol=1e-10, atol=1e-10)
    m0, s0 = p.predict_with_std(Xte)
    m, s = q.predict_with_std(Xte)
    np.testing.assert_allclose(m0, pred, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m, pred, rtol=1e-10, atol=1e-10)
    if name not in HAS_STD:
        assert s0 is None and s is None, name
        return
    assert s0 is not None and s is not None and (s0 > 0).all()
    np.testing.assert_allclose(s, s0, rtol=1e-8)  # the saved predictor keeps its uncertainty
    # calibrated on held-out mixtures: most true losses within 2 std, and the std not inflated to get there
    err = np.abs(pred - true_loss(Xte))
    assert (err < 2 * s0).mean() > 0.85 and s0.mean() < 4 * err.mean(), (
        name,
        (err < 2 * s0).mean(),
        s0.mean(),
        err.mean(),
    )
    # and it is an uncertainty about the weights: larger at near-pure mixtures, far from every run, than at
    # the runs
    corners = np.eye(X.shape[1]) * 0.96 + 0.01
    assert p.predict_with_std(corners)[1].mean() > 1.05 * p.predict_with_std(X)[1].mean(), name


def test_auto_beats_raw_linear_and_gives_std(data, tmp_path):
    X, y, Xte = data
    cands = [
        {"name": "linear", "features": "raw"},
        {"name": "linear", "features": "sqrt"},
        {"name": "gp", "features": "sqrt", "n_restarts": 0},
    ]
    a = make_predictor("auto", candidates=cands, cv_folds=4).fit(X, y)
    raw = make_predictor("linear", features="raw").fit(X, y)
    truth = true_loss(Xte)
    assert spearman(a.predict(Xte), truth) > spearman(raw.predict(Xte), truth)
    # selection is by CV: the raw-feature model must not dominate the ensemble
    w = {t["candidate"]: t["weight"] for t in a.cv_table}
    assert w["linear(raw)"] < 0.5
    assert a.oof is not None and a.oof.shape == y.shape
    _, s = a.predict_with_std(Xte)
    assert s is not None and (s > 0).all()
    save_predictor(a, tmp_path / "a.json")
    np.testing.assert_allclose(load_predictor(tmp_path / "a.json").predict(Xte), a.predict(Xte), atol=1e-10)


def test_auto_std_is_the_spread_of_its_weighted_members(data):
    """An ensemble's std is the mixture's: each member's own variance (none for LightGBM) plus how far the
    members disagree, so two confident members that disagree still give a wide std."""
    X, y, Xte = data
    a = make_predictor("auto", candidates=[{"name": "linear", "features": "sqrt"}]).fit(X, y)
    a.members = [
        make_predictor("linear", features="sqrt").fit(X, y),
        make_predictor("lightgbm", **FAST["lightgbm"]).fit(X, y),
    ]
    a.weights = np.array([0.6, 0.4])
    (m1, s1), (m2, s2) = (p.predict_with_std(Xte) for p in a.members)
    assert s2 is None
    mean, std = a.predict_with_std(Xte)
    np.testing.assert_allclose(mean, 0.6 * m1 + 0.4 * m2)
    np.testing.assert_allclose(
        std**2, 0.6 * s1**2 + 0.6 * (m1 - mean) ** 2 + 0.4 * (m2 - mean) ** 2, rtol=1e-10
    )
    assert (std > s1 * np.sqrt(0.6)).all() and np.abs(m1 - m2).max() > 0.01  # the disagreement is counted


def test_lightgbm_tiny_n_is_not_constant():
    df = runs_table(24, seed=3)
    X, y = df[weight_cols()].to_numpy(), df["target"].to_numpy()
    p = make_predictor("lightgbm", n_estimators=100).fit(X, y)
    assert np.ptp(p.predict(X)) > 0  # LightGBM's default min_data_in_leaf=20 would give a constant here


def test_every_selectable_predictor_is_tested():
    # scaling_law needs learning curves, not a weights table: tests/mixing/test_scaling_law.py
    selectable = {n for n, cls in registry().items() if cls.selectable}
    assert selectable == set(FAST) | {"auto", "scaling_law"}
