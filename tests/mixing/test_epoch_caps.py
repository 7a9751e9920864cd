"""Epoch caps at the pretraining budget: by default no domain is proposed more than ``max_epochs`` (4)
passes over its training tokens at the budget the mixture is for, because no proxy ever trained on
more repetition than that, and neither does the baseline the do-no-harm guard falls back to."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mixing_synth import DOMAINS, PRIOR, runs_table, weight_cols

from moemix.errors import MoemixError
from moemix.mixing.fit import FitConfig, fit_runs
from moemix.mixing.propose import ProposeConfig, proposal_to_doc, propose

# 'web' (the domain the synthetic loss rewards most: its unconstrained optimum is ~0.6) is tiny: at a
# 100k-token budget 4 epochs of its 2,000 tokens allow at most 0.08 of the mixture
TOKENS = np.array([2_000, 1e6, 1e6, 1e6, 1e6])
BUDGET = 100_000
WEB_CAP = 4 * 2_000 / BUDGET
CFG = ProposeConfig(method="constrained", n_samples=4000, max_weight_above_observed=None, min_support_runs=0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return fit_runs(
        runs_table(40, seed=5),
        "target",
        weight_cols(),
        FitConfig(predictor="linear", predictor_params={"features": "sqrt"}, plots=False),
        tmp_path_factory.mktemp("fit"),
        prior=PRIOR,
    )


def _clear_fit(fit):
    """A fit whose predicted gains are far outside its noise (the guard ships the optimum)."""
    return dataclasses.replace(fit, cv={**fit.cv, "rmse": 1e-4})


def test_the_default_caps_a_small_domain_at_four_epochs_of_the_budget(fitted):
    uncapped = propose(_clear_fit(fitted), None, dataclasses.replace(CFG, max_epochs=None), TOKENS, BUDGET)
    assert uncapped.weights[0] > 3 * WEB_CAP  # the cap binds here: without it 'web' repeats > 12 times
    p = propose(_clear_fit(fitted), None, CFG, TOKENS, BUDGET)
    assert p.weights[0] <= WEB_CAP + 1e-9
    assert p.weights.sum() == pytest.approx(1.0)
    assert p.constraints["epoch_cap_max_weight"]["web"] == pytest.approx(WEB_CAP)
    doc = proposal_to_doc(p, fitted)
    assert any("max_epochs" in n and "web" in n for n in doc.notes)


def test_the_fallback_baseline_is_uniform_within_the_caps(fitted):
    noisy = dataclasses.replace(fitted, cv={**fitted.cv, "rmse": 10.0})
    p = propose(noisy, None, CFG, TOKENS, BUDGET)
    assert p.decision.action == "baseline" and p.decision.baseline == "uniform"
    assert p.weights[0] == pytest.approx(WEB_CAP)  # uniform's 0.2 would repeat 'web' 10 times
    # what the cap frees is spread evenly over the other domains
    np.testing.assert_allclose(p.weights[1:], (1 - WEB_CAP) / 4, atol=1e-9)


def test_without_a_budget_there_is_nothing_to_cap(fitted):
    p = propose(_clear_fit(fitted), None, CFG, TOKENS, None)
    q = propose(_clear_fit(fitted), None, dataclasses.replace(CFG, max_epochs=None), TOKENS, None)
    np.testing.assert_allclose(p.weights, q.weights, atol=1e-9)
    assert "epoch_cap_max_weight" not in p.constraints
    assert p.constraints["max_epochs"] is None  # on record as not applied


def test_a_budget_no_mixture_fits_is_one_clear_error(fitted):
    with pytest.raises(MoemixError, match="no mixture fits the token budget"):
        propose(fitted, None, CFG, np.full(len(DOMAINS), 1_000), BUDGET)
