from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from mixing_synth import DOMAINS, PRIOR, runs_table, true_loss, weight_cols

from moemix.errors import MoemixError
from moemix.mixing.fit import FitConfig, fit_runs, load_fit
from moemix.mixing.propose import ProposeConfig, proposal_to_doc, propose, propose_next_batch
from moemix.mixing.schema import Decision, load_mixture, write_mixture

FAST = {"predictor_params": {"features": "sqrt"}}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    df = runs_table(40, seed=5)
    df.loc[3, "status"] = "failed"
    df.loc[4, "target"] = np.nan
    df.loc[6, "scale"] = "large"
    out = tmp_path_factory.mktemp("fit")
    res = fit_runs(df, "target", weight_cols(), FitConfig(predictor="linear", **FAST), out, prior=PRIOR)
    return res, out


def test_fit_counts_skips_and_writes_reports(fitted):
    res, out = fitted
    assert res.skipped == {"failed": 1, "other_scale": 1, "nan_target": 1}
    assert res.n_used == 37 and res.n_rows == 40
    assert res.cv["spearman"] > 0.9 and res.cv["kind"] == "kfold"
    for f in ("predictor.json", "cv.json", "explain.json", "fit.json", "plots/pred_vs_actual.png"):
        assert (out / f).exists(), f
    assert (out / "plots/pred_vs_actual.png").read_bytes()[:4] == b"\x89PNG"
    explain = json.loads((out / "explain.json").read_text())
    assert set(explain["values"]) == {f"sqrt:{d}" for d in DOMAINS}
    again = load_fit(out)
    assert again.domains == DOMAINS and again.prior_source == "given"
    np.testing.assert_allclose(again.prior, PRIOR)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.__setitem__("w/web", d["w/web"] + 0.01), "sum to"),
        (lambda d: d.loc.__setitem__((2, "target"), np.inf), "infinite loss"),
        (lambda d: d.loc.__setitem__((2, "w/code"), np.nan), "non-finite weight"),
    ],
)
def test_bad_runs_are_clear_errors(mutate, match, tmp_path):
    df = runs_table(20, seed=1)
    mutate(df)
    with pytest.raises(MoemixError, match=match):
        fit_runs(df, "target", weight_cols(), FitConfig(predictor="linear"), tmp_path)
    with pytest.raises(MoemixError, match="'nope'"):
        fit_runs(runs_table(20), "nope", weight_cols(), FitConfig(predictor="linear"), tmp_path)
    assert not (tmp_path / "fit.json").exists()


def test_weighted_and_separate_targets(tmp_path):
    df = runs_table(40, seed=7)
    spec = "loss/web:0.5,loss/code:0.5"
    comb = fit_runs(df, spec, weight_cols(), FitConfig(predictor="linear", **FAST), tmp_path / "c")
    sep = fit_runs(
        df, spec, weight_cols(), FitConfig(predictor="linear", target_mode="separate", **FAST), tmp_path / "s"
    )
    assert comb.target.coefs == [0.5, 0.5] and sep.predictor.name == "weighted_sum"
    X = runs_table(50, seed=8)[weight_cols()].to_numpy()
    # a linear model is additive, so fitting columns separately equals fitting their sum (up to priors)
    np.testing.assert_allclose(
        comb.predictor.predict(X), load_fit(tmp_path / "s").predictor.predict(X), atol=0.02
    )
    assert sep.cv["spearman"] > 0.8


@pytest.mark.parametrize("method", ["simulate", "constrained", "search"])
def test_proposers_beat_baselines_and_respect_constraints(fitted, method):
    res, _ = fitted
    cfg = ProposeConfig(
        method=method,
        n_samples=4000,
        top_k=32,
        max_weight={"web": 0.5},
        min_weight={"math": 0.05},
        max_epochs=2.0,
    )
    tokens = np.array([1000, 1000, 1000, 1000, 30])
    p = propose(res, None, cfg, domain_tokens=tokens, target_tokens=1000)
    assert p.weights.sum() == pytest.approx(1.0)
    assert p.weights[0] <= 0.5 + 1e-9 and p.weights[2] >= 0.05 - 1e-9
    assert p.weights[4] <= 0.06 + 1e-9  # epochs cap: 2 * 30 / 1000
    assert p.predicted_loss < p.baselines["natural"] and p.predicted_loss < p.baselines["uniform"]
    # the true surface agrees that the proposal is better than natural
    assert true_loss(p.weights[None])[0] < true_loss(PRIOR[None])[0]


def test_constrained_at_least_as_good_as_simulate(fitted):
    res, _ = fitted
    sim = propose(res, None, ProposeConfig(method="simulate", n_samples=4000, top_k=32))
    con = propose(res, None, ProposeConfig(method="constrained", n_samples=4000, top_k=32))
    assert con.predicted_loss <= sim.predicted_loss + 1e-6
    # KL to the prior pulls the optimum towards the prior
    reg = propose(res, None, ProposeConfig(method="constrained", n_samples=4000, kl_weight=1.0))
    kl = lambda w: float(np.sum(np.where(w > 0, w * np.log(w / PRIOR), 0)))  # noqa: E731
    assert kl(reg.weights) < kl(con.weights)


def test_infeasible_constraints_name_domain(fitted):
    res, _ = fitted
    with pytest.raises(MoemixError, match="'wiki'"):
        propose(res, None, ProposeConfig(min_weight={"wiki": 0.5}, max_weight={"wiki": 0.2}))
    with pytest.raises(MoemixError, match="unknown domain 'nope'"):
        propose(res, None, ProposeConfig(max_weight={"nope": 0.2}))
    with pytest.raises(MoemixError, match="no mixture fits"):
        propose(res, None, ProposeConfig(max_epochs=1.0), domain_tokens=np.full(5, 10), target_tokens=1000)


def test_next_batch_and_doc(fitted, tmp_path):
    res, _ = fitted
    existing = runs_table(40, seed=5)[weight_cols()].to_numpy()
    nb = propose_next_batch(res, None, 6, round_idx=1, existing=existing, cfg=ProposeConfig(n_samples=4000))
    assert nb.shape == (6, 5)
    np.testing.assert_allclose(nb.sum(axis=1), 1.0)
    assert np.abs(nb[:, None] - existing[None]).max(axis=2).min() >= 0.02
    # the batch targets the low-loss region: better on average than the runs so far
    assert true_loss(nb).mean() < true_loss(existing).mean()
    p = propose(res, None, ProposeConfig(n_samples=2000))
    doc = proposal_to_doc(p, res, domains_fingerprint="fp")
    write_mixture(tmp_path / "mixture.json", doc)
    back = load_mixture(tmp_path / "mixture.json")
    assert back.n_proxies == 39 and back.n_failed_proxies == 1 and back.predictor == "linear(features=sqrt)"
    assert back.baselines.natural == pytest.approx(p.baselines["natural"])
    assert res.best_observed == pytest.approx(
        float(np.nanmin(runs_table(40, seed=5)["target"].drop([3, 4, 6])))
    )
    extrapolates = p.predicted_loss < res.best_observed
    assert any("extrapolation" in n for n in (back.notes or [])) == extrapolates


def test_nested_cv_and_tree_proposer(tmp_path):
    df = runs_table(40, seed=9)
    cands = [
        {"name": "linear", "features": "sqrt"},
        {"name": "lightgbm", "n_estimators": 100, "learning_rate": 0.1},
    ]
    cfg = FitConfig(predictor="auto", cv_folds=3, nested_cv=True, predictor_params={"candidates": cands})
    res = fit_runs(df, "target", weight_cols(), cfg, tmp_path / "n", prior=PRIOR)
    assert res.cv["kind"] == "nested" and res.cv["spearman"] > 0.8
    assert {c["candidate"] for c in res.cv["candidates"]} == {"linear(sqrt)", "lightgbm"}
    # a tree model is not smooth: the constrained proposer must fall back to local search and still
    # respect bounds and improve on natural
    tree = fit_runs(
        df,
        "target",
        weight_cols(),
        FitConfig(predictor="lightgbm", predictor_params={"n_estimators": 100, "learning_rate": 0.1}),
        tmp_path / "t",
        prior=PRIOR,
    )
    assert tree.predictor.smooth is False
    p = propose(tree, None, ProposeConfig(method="constrained", n_samples=2000, max_weight={"web": 0.45}))
    assert p.weights[0] <= 0.45 + 1e-9 and p.predicted_loss <= p.baselines["natural"]


def test_separate_auto_reuses_member_oof(tmp_path):
    df = runs_table(30, seed=4)
    cands = [{"name": "linear", "features": "sqrt"}, {"name": "linear", "features": "raw"}]
    cfg = FitConfig(predictor="auto", target_mode="separate", predictor_params={"candidates": cands})
    res = fit_runs(df, "loss/web:0.5,loss/code:0.5", weight_cols(), cfg, tmp_path)
    assert res.cv["kind"] == "oof_of_selected_ensemble" and res.cv["n"] == 30
    assert res.cv["spearman"] > 0.9


def test_trust_region_keeps_proposals_near_the_explored_mixtures(tmp_path):
    # every run gives `math` at most 0.2 while the surface keeps rewarding it: unguarded proposers go further
    df = runs_table(40, seed=3)
    w = df[weight_cols()].to_numpy().copy()
    w[:, 2] = np.minimum(w[:, 2], 0.2)
    w /= w.sum(axis=1, keepdims=True)
    df[weight_cols()] = w
    df["target"] = 3.0 - 2.0 * w[:, 2] + 0.1 * w[:, 0]
    res = fit_runs(
        df, "target", weight_cols(), FitConfig(predictor="linear", **FAST), tmp_path / "fit", prior=PRIOR
    )
    observed = w.max(axis=0)
    assert res.observed_max_weight == pytest.approx(observed.tolist())
    assert load_fit(tmp_path / "fit").observed_max_weight == pytest.approx(observed.tolist())
    for method in ("simulate", "constrained"):
        # do-no-harm off: this test is about the trust region alone
        free = propose(
            res,
            None,
            ProposeConfig(
                method=method, n_samples=4000, top_k=32, max_weight_above_observed=None, min_gain_sigmas=None
            ),
        )
        held = propose(
            res, None, ProposeConfig(method=method, n_samples=4000, top_k=32, min_gain_sigmas=None)
        )
        assert free.weights[2] > observed[2] + 0.1 + 0.05, method
        assert np.all(held.weights <= observed + 0.1 + 1e-6), method
        assert held.constraints["trust_region_max_weight"]["math"] == pytest.approx(
            observed[2] + 0.1, abs=1e-6
        )
    doc = proposal_to_doc(held, res)
    assert any(
        "edge of the region the proxies explored" in n and "math" in n and "proxies.rounds" in n
        for n in doc.notes
    )
    # after two rounds (rounds: auto's second) the note names the setting that trains a third
    assert any("(proxies.rounds: 3 trains" in n for n in proposal_to_doc(held, res, rounds_run=2).notes)
    # the guard kept most of the step: the shipped weight sits just inside the edge its optimum was held at
    uni = np.full(len(held.domains), 1.0 / len(held.domains))
    inside = held.weights - 0.1 * (held.weights - uni)
    assert inside[2] < held.constraints["trust_region_max_weight"]["math"] - 1e-4
    for action, noted in (("shrunk", True), ("baseline", False)):
        dec = Decision(action, "uniform", 0.5, 0.1, 0.9, None, optimum=held.as_dict())
        doc = proposal_to_doc(replace(held, weights=inside, decision=dec), res)
        assert any("edge of the region the proxies explored" in n for n in doc.notes) == noted, action
    with pytest.raises(MoemixError, match="max_weight_above_observed must be >= 0"):
        propose(res, None, ProposeConfig(max_weight_above_observed=-0.1))


def test_an_anchored_next_batch_puts_half_around_the_anchor_and_half_at_the_fits_best(fitted):
    """The proposer may ship a mixture away from the fit's raw best (a trust region, a KL pull): half
    the batch checks that mixture, the other half still goes where the fit predicts lowest."""
    res, _ = fitted
    existing = runs_table(40, seed=5)[weight_cols()].to_numpy()
    cfg = ProposeConfig(n_samples=4000)
    anchor = np.array([0.12, 0.33, 0.05, 0.3, 0.2])  # no run within 0.02 of it
    assert np.abs(existing - anchor).max(axis=1).min() > 0.02
    free = propose_next_batch(res, None, 6, round_idx=1, existing=existing, cfg=cfg)
    nb = propose_next_batch(res, None, 6, round_idx=1, existing=existing, cfg=cfg, anchor=anchor)
    assert nb.shape == (6, 5)
    np.testing.assert_allclose(nb.sum(axis=1), 1.0)
    everyone = np.vstack([existing, nb])
    gaps = np.abs(everyone[:, None] - everyone[None]).max(axis=2) + np.eye(len(everyone))
    assert gaps.min() >= 0.02  # distinct from the runs and from each other
    np.testing.assert_allclose(nb[0], anchor, atol=1e-9)
    to_anchor = np.abs(nb - anchor).max(axis=1)
    assert to_anchor[:3].max() < np.abs(free - anchor).max(axis=1).min(), (to_anchor, free)
    # neighbours on every side of the anchor, not only the side the fit descends to (which the other
    # half covers): some are predicted worse than the anchor itself
    assert (res.predictor.predict(nb[1:3]) > res.predictor.predict(anchor[None])[0]).any()
    # the rest goes where the fit predicts lowest: better, by the fit, than every run so far
    assert res.predictor.predict(nb[3:]).max() < res.predictor.predict(existing).min()
