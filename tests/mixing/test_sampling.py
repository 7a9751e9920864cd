from __future__ import annotations

import numpy as np
import pytest

from moemix.errors import MoemixError
from moemix.mixing.sampling import SamplerConfig, project_capped, sample_mixtures

PRIOR = np.array([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("method", ["dirichlet", "space_filling"])
def test_rows_are_mixtures_with_references_first(method):
    x = sample_mixtures(PRIOR, SamplerConfig(n_mixtures=40, method=method), seed=0)
    assert x.shape == (40, 4)
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=1e-12)
    assert (x >= 0).all()
    np.testing.assert_allclose(x[0], 0.25)
    np.testing.assert_allclose(x[1], PRIOR)
    # sampled rows are distinct and not all near the prior (a spread of concentrations)
    d = np.abs(x[2:, None, :] - x[None, 2:, :]).max(axis=2) + np.eye(38)
    assert d.min() > 1e-3
    assert np.abs(x[2:] - PRIOR).max(axis=1).max() > 0.3


def test_seed_determinism_and_sparsity():
    cfg = SamplerConfig(n_mixtures=30, min_weight=0.02)
    a, b = sample_mixtures(PRIOR, cfg, 3), sample_mixtures(PRIOR, cfg, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_mixtures(PRIOR, cfg, 4))
    s = a[2:]
    assert ((s == 0) | (s >= 0.02 - 1e-12)).all()
    assert (s == 0).any()  # low concentrations + min_weight produce sparse mixtures


def test_token_caps_respected_including_references():
    tokens = np.array([1000, 600, 300, 10])
    cfg = SamplerConfig(n_mixtures=50, max_epochs=2.0)
    x = sample_mixtures(PRIOR, cfg, 0, domain_tokens=tokens, tokens_per_run=400)
    caps = np.minimum(1, 2.0 * tokens / 400)  # last domain: 0.05
    assert (x <= caps + 1e-12).all()
    np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=1e-12)
    assert x[0, 3] == pytest.approx(0.05)  # uniform projected onto the cap


def test_impossible_caps_name_the_domain():
    with pytest.raises(MoemixError, match="'tiny'"):
        sample_mixtures(
            PRIOR,
            SamplerConfig(n_mixtures=5, max_epochs=1.0),
            0,
            domain_tokens=np.array([10, 10, 10, 1]),
            tokens_per_run=1000,
            domain_names=["a", "b", "c", "tiny"],
        )


def test_project_capped_keeps_bounds():
    w = np.array([[0.9, 0.05, 0.05, 0.0]])
    out = project_capped(w, np.zeros(4), np.array([0.5, 1, 1, 1]))
    assert out[0, 0] == pytest.approx(0.5)
    assert out.sum() == pytest.approx(1.0)
    assert out[0, 3] == 0.0  # zero weights stay zero when others have room
