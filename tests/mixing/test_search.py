from __future__ import annotations

import numpy as np
from mixing_synth import DOMAINS, PRIOR, true_loss

from moemix.mixing.sampling import SamplerConfig, sample_mixtures
from moemix.mixing.search import SearchConfig, iterative_search


def test_iterative_search_beats_one_shot_sampling_at_equal_budget():
    calls = []

    def evaluate(W):
        calls.append(len(W))
        y = true_loss(W)
        y[0] = np.nan if len(calls) == 2 else y[0]  # one failed run in round 1 is tolerated
        return y

    cfg = SearchConfig(
        rounds=3,
        first_batch=16,
        batch=8,
        predictor="linear",
        predictor_params={"features": "sqrt"},
        sampler=SamplerConfig(max_epochs=None),
    )
    res = iterative_search(evaluate, PRIOR, DOMAINS, cfg, seed=0)
    assert calls == [16, 8, 8] and res.mixtures.shape == (32, 5)
    assert list(np.bincount(res.rounds)) == [16, 8, 8]
    np.testing.assert_allclose(res.mixtures.sum(axis=1), 1.0)
    one_shot = sample_mixtures(PRIOR, SamplerConfig(n_mixtures=32, max_epochs=None), 0)
    # later rounds concentrate on the low-loss region, so the best run found is better
    assert res.best[1] < true_loss(one_shot).min()
    later = res.losses[res.rounds > 0]
    assert np.nanmean(later) < np.nanmean(res.losses[res.rounds == 0])
    assert res.fit is not None and res.fit.n_used == 31
