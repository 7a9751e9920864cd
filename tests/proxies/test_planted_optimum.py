"""End to end on synthetic domains: swarm -> fit -> propose recovers a planted target mixture.

The target set is drawn from a known mixture of four Markov-chain domains. The chains have wide,
overlapping successor sets (fanout 8), so a small proxy cannot tell domains apart from a few
tokens and effectively learns the *mixture's* transition statistics; its target loss is then
minimised when the training mixture matches the target's, which plants the optimum at the known
mixture. (With narrow, easily identified chains the optimum flattens towards uniform instead:
a real property of mixture optimisation, not a bug, but useless as a planted answer.)
"""

from __future__ import annotations

import numpy as np
import pytest

from moemix.mixing.fit import FitConfig, fit_runs
from moemix.mixing.propose import ProposeConfig, propose
from moemix.mixing.sampling import SamplerConfig, sample_mixtures
from moemix.moe_model import MoEConfig
from moemix.proxies.run import collect_runs, specs_for_mixtures
from moemix.proxies.synthetic import write_markov_domains, write_target_set
from moemix.token_shards import DomainTokens
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig

pytestmark = pytest.mark.slow

PLANTED = np.array([0.5, 0.3, 0.15, 0.05])


def test_swarm_fit_propose_recovers_planted_mixture(ray_session, tmp_path):
    from moemix.ray_jobs.swarm import run_swarm

    chains = write_markov_domains(
        tmp_path / "tokens",
        n_domains=4,
        vocab_size=64,
        train_tokens=60_000,
        valid_tokens=3_000,
        seed=0,
        fanout=8,
        concentration=0.85,
    )
    write_target_set(
        tmp_path / "target", chains, dict(zip(["d0", "d1", "d2", "d3"], PLANTED)), valid_tokens=8_000
    )
    data = DomainTokens(tmp_path / "tokens")
    prior = np.array([0.3, 0.3, 0.2, 0.2])  # not uniform, so the uniform and natural rows differ
    mixtures = sample_mixtures(
        prior,
        SamplerConfig(n_mixtures=20, max_epochs=None, concentration_min=1.0, concentration_max=10.0),
        seed=0,
    )
    model = MoEConfig(
        vocab_size=64, max_seq_len=64, d_model=32, n_layers=1, n_heads=2, n_experts=4, top_k=2, d_expert=64
    )
    train_cfg = TrainConfig(
        steps=150, batch_size=8, seq_len=64, lr=1e-2, eval_tokens=2048, measure_mfu=False, log_every=1000
    )
    specs = specs_for_mixtures(
        mixtures,
        model=model,
        train_cfg=train_cfg,
        target=TargetConfig(external=str(tmp_path / "target")),
        tokens_dir=tmp_path / "tokens",
        out_dir=tmp_path / "proxies",
        data=data,
    )
    results = run_swarm(specs, num_cpus_per_proxy=1, max_retries=1, transient_retries=1, progress=False)
    assert all(r.status == "ok" for r in results)
    runs = collect_runs(tmp_path / "proxies")
    assert len(runs) == 20

    fit = fit_runs(
        runs,
        "target",
        [f"w/d{i}" for i in range(4)],
        FitConfig(predictor="auto", plots=False),
        tmp_path / "fit",
    )
    proposal = propose(fit, prior, ProposeConfig(n_samples=20_000))
    l1 = float(np.abs(proposal.weights - PLANTED).sum())
    # the prior the sampler starts from is at L1 0.40 from the planted mixture, uniform at 0.60. Over 8
    # sampler seeds this swarm's proposal lands at L1 0.085-0.335 (median 0.19; 0.207 for seed 0), so
    # the bound asks for 40% of the way from the prior, which a proposer that ignored the runs misses
    prior_l1 = float(np.abs(prior - PLANTED).sum())
    assert l1 < 0.6 * prior_l1, f"proposed {np.round(proposal.weights, 3)} vs planted {PLANTED} (L1 {l1:.3f})"
    # and the proposal beats both reference mixtures according to the fitted predictor
    assert proposal.predicted_loss < min(proposal.baselines.values())
