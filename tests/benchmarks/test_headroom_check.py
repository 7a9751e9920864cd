"""benchmarks/headroom_check.py: the own-weight law, its optimum, and the baselines it shares."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_mixture_quality as bmq  # noqa: E402
import headroom_check as hc  # noqa: E402


def test_fit_recovers_a_known_law() -> None:
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(6), size=12)[:, 0]
    truth = hc.OwnWeightLaw(a=4.0, b=0.4, t=0.05)
    law = hc.fit_own_weight_law(w, truth(w))
    assert law.t == 0.05 and law.a == pytest.approx(4.0) and law.b == pytest.approx(0.4)


def test_slope_is_never_negative() -> None:
    w = np.array([0.05, 0.1, 0.2, 0.4])
    law = hc.fit_own_weight_law(w, 3.0 + w)  # more of the domain made it worse: noise, not a law
    assert law.b == 0.0 and law(w) == pytest.approx(np.full(4, np.mean(3.0 + w)))


def test_optimum_without_transfer_is_proportional_to_slopes() -> None:
    laws = [hc.OwnWeightLaw(5.0, b, 0.001) for b in (0.2, 0.3, 0.5)]
    w = hc.law_optimum(laws, np.full(3, 1 / 3))
    assert w == pytest.approx(np.array([0.2, 0.3, 0.5]), abs=2e-3)
    # the mean target's gain over uniform is mean(b) * KL(b / sum(b) || uniform)
    p = np.array([0.2, 0.3, 0.5])
    gain = hc.predicted_target(laws, np.full(3, 1 / 3), np.full(3, 1 / 3)) - hc.predicted_target(
        laws, np.full(3, 1 / 3), w
    )
    assert gain == pytest.approx(np.mean([0.2, 0.3, 0.5]) * float(p @ np.log(3 * p)), rel=0.02)


def test_optimum_matches_a_numerical_solver_and_respects_caps() -> None:
    laws = [hc.OwnWeightLaw(5.0, 0.5, 0.2), hc.OwnWeightLaw(4.0, 0.1, 0.01), hc.OwnWeightLaw(6.0, 0.3, 0.05)]
    tvec = np.array([0.5, 0.2, 0.3])
    caps = np.array([0.45, 1.0, 1.0])

    def objective(x: np.ndarray) -> float:
        return hc.predicted_target(laws, tvec, np.clip(x, 1e-12, 1))

    ref = minimize(
        objective,
        np.full(3, 1 / 3),
        method="SLSQP",
        bounds=[(0, c) for c in caps],
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
    ).x
    w = hc.law_optimum(laws, tvec, caps)
    assert w.sum() == pytest.approx(1.0) and (w <= caps + 1e-9).all()
    assert w[0] == pytest.approx(0.45)  # the cap binds: the law would give it more
    assert w == pytest.approx(ref, abs=2e-3)
    assert objective(w) <= objective(ref) + 1e-6


def test_a_target_on_flat_domains_stays_uniform() -> None:
    laws = [hc.OwnWeightLaw(5.0, 0.0, 0.1)] * 4
    assert hc.law_optimum(laws, np.full(4, 0.25)) == pytest.approx(np.full(4, 0.25))


def test_baselines_are_the_benchmarks() -> None:
    runs = bmq.baseline_runs(["a", "b", "c"], {"a": 100, "b": 300, "c": 600}, 0, 3, 2)
    assert list(runs) == [
        "uniform@seed0",
        "uniform@seed1",
        "uniform@seed2",
        "natural",
        "random_0",
        "random_1",
    ]
    assert runs["natural"] == ({"a": 0.1, "b": 0.3, "c": 0.6}, 0)
    assert runs["uniform@seed2"][1] == 2 and runs["random_1"][1] == 0
    expect = np.random.default_rng(1001).dirichlet(np.ones(3))
    assert list(runs["random_1"][0].values()) == pytest.approx(expect.tolist())


def test_elasticity_is_the_loss_drop_per_e_fold_of_own_weight() -> None:
    laws = [hc.OwnWeightLaw(5.0, 0.4, 0.001), hc.OwnWeightLaw(5.0, 0.4, 0.3)]
    e = hc.elasticities(laws, 0.125)
    h = 1e-5  # finite difference in log w
    fd = [(law(0.125 * np.exp(-h)) - law(0.125 * np.exp(h))) / (2 * h) for law in laws]
    assert e == pytest.approx(np.array(fd, dtype=float), rel=1e-4)
    assert e[0] == pytest.approx(0.4, rel=0.01) and e[1] < 0.15  # transfer damps what own tokens add
