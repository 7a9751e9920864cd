"""The proposer's do-no-harm guards: shrinkage toward the better baseline, the support floor, and the
uncertainty-scaled pull toward the prior."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mixing_synth import PRIOR, runs_table, weight_cols

from moemix.mixing.fit import FitConfig, fit_runs
from moemix.mixing.propose import ProposeConfig, fit_noise, harm_share, proposal_to_doc, propose

CFG = ProposeConfig(
    method="constrained",
    n_samples=4000,
    max_weight_above_observed=None,
    min_support_runs=0,
    uncertainty_kl=0.0,
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    return fit_runs(
        runs_table(40, seed=5),
        "target",
        weight_cols(),
        FitConfig(predictor="linear", predictor_params={"features": "sqrt"}, plots=False),
        out,
        prior=PRIOR,
    )


def _with_noise(fit, rmse: float, seed_std: float | None = None):
    cv = {**fit.cv, "rmse": rmse}
    noise = None if seed_std is None else {"n": 3, "mean": 3.0, "std": seed_std, "range": 2 * seed_std}
    return dataclasses.replace(fit, cv=cv, seed_noise=noise)


def test_noise_is_the_larger_of_cv_error_and_a_two_seed_difference(fitted):
    assert fit_noise(_with_noise(fitted, 0.01)) == pytest.approx(0.01)
    assert fit_noise(_with_noise(fitted, 0.01, seed_std=0.05)) == pytest.approx(0.05 * np.sqrt(2))


def test_a_clear_gain_ships_the_optimum(fitted):
    p = propose(_with_noise(fitted, 1e-4), None, CFG)
    assert p.decision.action == "optimum" and p.decision.shrink == 1.0
    unguarded = propose(fitted, None, dataclasses.replace(CFG, min_gain_sigmas=None))
    np.testing.assert_allclose(p.weights, unguarded.weights, atol=1e-9)


def test_a_gain_within_the_noise_is_shrunk_toward_the_better_baseline(fitted):
    unguarded = propose(fitted, None, dataclasses.replace(CFG, min_gain_sigmas=None))
    gain = min(unguarded.baselines.values()) - unguarded.predicted_loss
    assert gain > 0
    # noise gain/sqrt(2): a loss is as likely as 1.41 noise units make it, half the gate's risk
    # (1 - Phi(-1.41) / Phi(-1) = 0.50; James-Stein's 1 - (noise/gain)^2 agrees there): half the step
    p = propose(_with_noise(fitted, gain / np.sqrt(2)), None, CFG)
    assert p.decision.action == "shrunk"
    assert p.decision.shrink == pytest.approx(0.5, abs=0.02)
    base = {"uniform": np.full(len(PRIOR), 1 / len(PRIOR)), "natural": PRIOR}[p.decision.baseline]
    # on the segment from the baseline to the optimum, half way
    np.testing.assert_allclose(p.weights, base + 0.5 * (unguarded.weights - base), atol=0.02)
    doc = proposal_to_doc(p, fitted)
    assert doc.decision.action == "shrunk" and any("do-no-harm" in n for n in doc.notes)


def test_the_kept_share_is_the_share_of_the_gates_risk_of_harm_ruled_out() -> None:
    assert harm_share(1.0, 1.0, 1.0) == 0.0 and harm_share(0.5, 1.0, 1.0) == 0.0
    assert harm_share(-1.0, 1.0, 1.0) == 0.0
    assert harm_share(np.sqrt(2), 1.0, 1.0) == pytest.approx(0.504, abs=0.002)
    assert harm_share(2.0, 1.0, 1.0) == pytest.approx(1 - 0.02275 / 0.15866, abs=1e-3)
    assert harm_share(3.0, 1.0, 1.0) > 0.99  # James-Stein: 0.89
    assert harm_share(3.0, 1.0, 2.0) == pytest.approx(1 - 0.00135 / 0.02275, abs=1e-3)  # a stricter gate
    shares = [harm_share(g, 0.1, 1.0) for g in np.linspace(0.1, 0.5, 41)]
    assert all(b >= a for a, b in zip(shares, shares[1:]))


def test_a_gain_of_three_noise_units_ships_the_whole_step(fitted):
    """A loss is a 1-in-740 chance at 3 noise units: the guard ships the optimum, where James-Stein held
    back 11% of the step (on every subset target measured, that part cost 0.00-0.07 nats)."""
    unguarded = propose(fitted, None, dataclasses.replace(CFG, min_gain_sigmas=None))
    gain = min(unguarded.baselines.values()) - unguarded.predicted_loss
    p = propose(_with_noise(fitted, gain / 3.0), None, CFG)
    assert p.decision.action == "optimum" and p.decision.shrink == 1.0
    np.testing.assert_allclose(p.weights, unguarded.weights, atol=1e-9)
    assert "chance it is no gain 0.0013" in p.decision.reason


def test_a_gain_of_about_one_noise_unit_ships_the_baseline(fitted):
    """A gain just over 1 sigma is wrong about one time in six: no step at all, not the whole step."""
    unguarded = propose(fitted, None, dataclasses.replace(CFG, min_gain_sigmas=None))
    gain = min(unguarded.baselines.values()) - unguarded.predicted_loss
    p = propose(_with_noise(fitted, gain / 1.01), None, CFG)
    assert p.decision.action == "shrunk" and p.decision.shrink < 0.03
    # what the guard withheld is on record (the benchmark pretrains it to audit the guard)
    withheld = np.array([p.decision.optimum[d] for d in p.domains])
    np.testing.assert_allclose(withheld, unguarded.weights, atol=1e-6)
    assert p.decision.optimum_predicted_loss == pytest.approx(unguarded.predicted_loss, abs=1e-9)


def test_no_predicted_gain_ships_the_baseline(fitted):
    # a predictor that thinks every mixture is the same: nothing justifies leaving the better baseline
    class Flat:
        label = name = "flat"
        smooth = True

        def predict(self, W):
            return np.full(len(np.atleast_2d(W)), 3.0)

        def predict_with_std(self, W):
            return self.predict(W), None

    flat = dataclasses.replace(_with_noise(fitted, 0.01), predictor=Flat())
    p = propose(flat, None, CFG)
    assert p.decision.action == "baseline" and p.decision.shrink == 0.0
    base = {"uniform": np.full(len(PRIOR), 1 / len(PRIOR)), "natural": PRIOR}[p.decision.baseline]
    np.testing.assert_allclose(p.weights, base, atol=1e-9)


def test_support_floor_keeps_every_domain_above_its_third_smallest_observed_weight(fitted):
    free = dataclasses.replace(CFG, min_gain_sigmas=None)
    unguarded = propose(fitted, None, free)
    j = int(np.argmin(unguarded.weights))
    # runs that never gave domain j less than its unguarded weight + 0.1 (one run below: not enough support)
    W = np.asarray(fitted.observed_weights).copy()
    W[:, j] = np.maximum(W[:, j], unguarded.weights[j] + 0.1)
    W[0, j] = 0.0
    W /= W.sum(axis=1, keepdims=True)
    floor = np.sort(W, axis=0)[2]
    p = propose(
        dataclasses.replace(fitted, observed_weights=W.tolist()),
        None,
        dataclasses.replace(free, min_support_runs=3),
    )
    assert floor[j] > unguarded.weights[j] + 0.05
    assert (p.weights >= floor - 1e-9).all()
    np.testing.assert_allclose(list(p.constraints["trust_region_min_weight"].values()), floor, atol=1e-6)


def test_a_noisier_fit_stays_closer_to_the_better_baseline(fitted):
    cfg = dataclasses.replace(CFG, uncertainty_kl=1.0, min_gain_sigmas=None)
    sharp = propose(_with_noise(fitted, 1e-4), None, cfg)
    noisy = propose(_with_noise(fitted, 0.05), None, cfg)
    anchor = noisy.constraints["uncertainty_kl"]["anchor"]
    assert noisy.constraints["uncertainty_kl"]["weight"] == pytest.approx(0.05)
    base = {"uniform": np.full(len(PRIOR), 1 / len(PRIOR)), "natural": PRIOR}[anchor]

    def kl(w):
        return float(np.sum(np.where(w > 0, w * np.log(w / base), 0.0)))

    assert kl(noisy.weights) < 0.85 * kl(sharp.weights), (kl(noisy.weights), kl(sharp.weights))


def test_tight_bootstrap_members_do_not_override_a_large_out_of_fold_error(fitted):
    """Refits that agree (small standard error of the gain) say the data pin the fit down, not that the
    model is right: a gain below the held-out error still ships the baseline."""

    class Agreeing:
        label = name = "agreeing"
        smooth = True

        def __init__(self, inner):
            self.inner = inner

        def predict(self, W):
            return self.inner.predict(W)

        def predict_with_std(self, W):
            return self.inner.predict_with_std(W)

        def predict_members(self, W):
            return np.vstack([self.inner.predict(W) + 1e-6 * i for i in range(8)])

    unguarded = propose(fitted, None, dataclasses.replace(CFG, min_gain_sigmas=None))
    gain = min(unguarded.baselines.values()) - unguarded.predicted_loss
    agreeing = dataclasses.replace(_with_noise(fitted, 2 * gain), predictor=Agreeing(fitted.predictor))
    p = propose(agreeing, None, CFG)
    assert p.decision.action == "baseline" and p.decision.noise == pytest.approx(2 * gain)


class _OneDomainLaw:
    """Loss depends on the first domain's weight: linear (falls all the way to the simplex edge) or a bowl
    with its minimum at ``bottom``. A shallow bowl pins how the rest is split to natural's proportions:
    left flat, that split is wherever the solver stops (it differs between CPUs), and the ray from natural
    meets the simplex wherever a domain happened to land near 0 (at 1.16 x the step on one machine)."""

    label = name = "one-domain"
    smooth = True
    rest = PRIOR[1:] / PRIOR[1:].sum()

    def __init__(self, bottom: float | None = None):
        self.bottom = bottom

    def predict(self, W):
        W = np.atleast_2d(W)
        w0 = W[:, 0]
        split = W[:, 1:] / np.maximum(1.0 - w0, 1e-12)[:, None]
        shape = 0.05 * ((split - self.rest) ** 2).sum(axis=1)
        return shape + (3.0 - w0 if self.bottom is None else 3.0 + (w0 - self.bottom) ** 2)

    def predict_with_std(self, W):
        return self.predict(W), None


def _held_back(fitted, law, noise_of_gain: float):
    """A fit whose runs never gave the first domain more than 0.4, so the trust region (0.1 above) stops
    the search at 0.5; the noise is the predicted gain over natural divided by ``noise_of_gain``."""
    W = np.random.default_rng(0).dirichlet(np.ones(len(PRIOR)), size=40)
    W[:, 0] = 0.4 * W[:, 0] / W[:, 0].max()
    W[:, 1:] *= ((1 - W[:, 0]) / W[:, 1:].sum(axis=1))[:, None]
    fit = dataclasses.replace(
        fitted, predictor=law, observed_weights=W.tolist(), observed_max_weight=W.max(axis=0).tolist()
    )
    cfg = dataclasses.replace(CFG, max_weight_above_observed=0.1, min_gain_sigmas=None)
    gain = float(law.predict(PRIOR[None, :])[0] - propose(fit, None, cfg).predicted_loss)
    assert gain > 0  # natural (0.4 on the first domain) is the better baseline
    return _with_noise(fit, gain / noise_of_gain), dataclasses.replace(cfg, min_gain_sigmas=1.0)


def test_an_optimum_the_trust_region_held_back_is_shrunk_before_it_is_clipped(fitted):
    """A gain of 2 noise units (the share alone would keep 0.86 of the step) and a loss that keeps
    falling past the trust region until the ray meets the simplex edge: the shrunk optimum on the ray
    still lies beyond the clipped one, so the whole step ships."""
    fit, cfg = _held_back(fitted, _OneDomainLaw(), 2.0)
    p = propose(fit, None, cfg)
    assert p.decision.signal_share == pytest.approx(harm_share(2.0, 1.0, 1.0), abs=0.01)
    assert p.decision.ray_optimum >= 1.0 / p.decision.signal_share - 1e-9  # searched up to 1/signal share
    assert p.decision.action == "optimum" and p.decision.shrink == 1.0
    unguarded = propose(fit, None, dataclasses.replace(cfg, min_gain_sigmas=None))
    np.testing.assert_allclose(p.weights, unguarded.weights, atol=1e-9)
    assert p.weights[0] == pytest.approx(0.5, abs=1e-6)  # clipped to the trust region all the same


def test_an_interior_optimum_keeps_the_guards_share_of_the_step(fitted):
    """The same fit, but the loss is least at 0.45 on the first domain, inside the trust region: the ray
    finds nothing better beyond the optimum and half the step ships."""
    fit, cfg = _held_back(fitted, _OneDomainLaw(bottom=0.45), np.sqrt(2))
    p = propose(fit, None, cfg)
    assert p.decision.ray_optimum == pytest.approx(1.0, abs=0.02)
    assert p.decision.action == "shrunk" and p.decision.shrink == pytest.approx(0.5, abs=0.02)


def test_a_held_back_optimum_with_a_gain_of_one_noise_unit_still_stays_near_the_baseline(fitted):
    """No cliff: a falling loss beyond the trust region does not turn a gain of just over 1 sigma into the
    whole step."""
    fit, cfg = _held_back(fitted, _OneDomainLaw(), 1.01)
    p = propose(fit, None, cfg)
    assert p.decision.signal_share < 0.03
    assert p.decision.action == "shrunk" and p.decision.shrink < 0.2
    assert p.weights[0] < 0.42


def test_the_noise_scaled_kl_pull_and_the_guards_shrink_do_not_compound(fitted):
    """The KL pull toward the better baseline (weight = the noise) already holds the proposal short of the
    predictor's optimum; the guard's share then shrinks the predictor's optimum, not the held-back proposal,
    and the nearer of the two to the baseline ships."""
    law = _OneDomainLaw(bottom=0.8)
    fit = dataclasses.replace(fitted, predictor=law)
    free = dataclasses.replace(CFG, uncertainty_kl=1.0, min_gain_sigmas=None)
    gain = float(law.predict(PRIOR[None, :])[0] - propose(_with_noise(fit, 0.02), None, free).predicted_loss)
    fit = _with_noise(fit, gain / 2.0)  # the guard's share alone: 0.86 of the step
    pulled = propose(fit, None, free)
    p = propose(fit, None, dataclasses.replace(free, min_gain_sigmas=1.0))
    assert pulled.weights[0] < 0.78  # the KL pull held it back from the predictor's optimum (0.8)
    assert p.decision.ray_optimum > 1.05
    assert p.decision.shrink == pytest.approx(min(1.0, p.decision.signal_share * p.decision.ray_optimum))
    assert p.decision.shrink > p.decision.signal_share + 0.03


class _NaturalSlightlyBetter:
    """Natural predicted 0.0065 below uniform (loss falls along natural's tilt away from uniform)."""

    label = name = "tilted"
    smooth = True

    def predict(self, W):
        return 3.0 - 0.1 * np.atleast_2d(W) @ (PRIOR - 1 / len(PRIOR))

    def predict_with_std(self, W):
        return self.predict(W), None


def _on_domain_losses(fitted, coefs, noise: float):
    from moemix.mixing.runs import TargetSpec

    cols = [c.replace("w/", "loss/") for c in fitted.weight_cols]
    target = TargetSpec([c for c, k in zip(cols, coefs) if k], [k for k in coefs if k])
    return _with_noise(dataclasses.replace(fitted, predictor=_NaturalSlightlyBetter(), target=target), noise)


def test_baselines_within_the_noise_fall_back_to_the_one_nearer_the_targets_weighting(fitted):
    """The mean of all domains weighs them equally: when the fit cannot tell uniform from natural, the
    guard falls back to (and the KL pull anchors on) uniform, not to a coin toss won by 0.0065."""
    cfg = dataclasses.replace(CFG, uncertainty_kl=1.0)
    fit = _on_domain_losses(fitted, [1] * len(PRIOR), noise=0.05)
    assert fit.target_weights() == pytest.approx(np.full(len(PRIOR), 1 / len(PRIOR)))
    p = propose(fit, None, cfg)
    assert p.decision.baseline == "uniform" and p.constraints["uncertainty_kl"]["anchor"] == "uniform"
    assert "within the noise of each other" in p.decision.reason
    # a subset target on the domain natural gives most: natural is the nearer one
    web = propose(_on_domain_losses(fitted, [1, 0, 0, 0, 0], noise=0.05), None, cfg)
    assert web.decision.baseline == "natural"


def test_baselines_the_fit_tells_apart_fall_back_to_the_better_predicted(fitted):
    p = propose(_on_domain_losses(fitted, [1] * len(PRIOR), noise=0.001), None, CFG)
    assert p.decision.baseline == "natural"
    assert "within the noise of each other" not in (p.decision.reason or "")
