"""The Ray swarm: resumes, retries transient errors, survives worker deaths, records failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moemix.moe_model import MoEConfig
from moemix.proxies.run import collect_runs, specs_for_mixtures
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig

pytestmark = pytest.mark.slow

TINY = MoEConfig(
    vocab_size=64, max_seq_len=32, d_model=32, n_layers=1, n_heads=2, n_experts=4, top_k=2, d_expert=32
)


def _specs(markov_data, markov_tokens, out, n):
    mixtures = np.random.default_rng(3).dirichlet(np.ones(4), size=n)
    tc = TrainConfig(steps=8, batch_size=4, seq_len=32, eval_tokens=128, measure_mfu=False, log_every=8)
    return specs_for_mixtures(
        mixtures,
        model=TINY,
        train_cfg=tc,
        target=TargetConfig(),
        tokens_dir=markov_tokens,
        out_dir=out,
        data=markov_data,
    )


def _stamp(spec):
    return json.loads(spec.result_path.read_text())["finished_at"]


def test_swarm_retries_crashes_records_failures_and_resumes(
    ray_session, markov_data, markov_tokens, tmp_path
):
    from moemix.ray_jobs.swarm import run_swarm

    specs = _specs(markov_data, markov_tokens, tmp_path, 5)
    specs[1].inject_errors = 1  # raises once: retried inside the task
    specs[2].inject_errors = 9  # always raises: recorded as failed
    specs[3].inject_crashes = 1  # worker dies once: Ray re-runs the task
    res = run_swarm(specs, num_cpus_per_proxy=1, max_retries=1, transient_retries=1, progress=False)
    assert [r.run_id for r in res] == [s.run_id for s in specs]
    assert [r.status for r in res] == ["ok", "ok", "failed", "ok", "ok"]
    assert res[1].attempts == 2
    assert res[2].attempts == 2 and "injected transient failure" in res[2].error
    assert (specs[3].run_dir / ".crashes").read_text() == "1"
    df = collect_runs(tmp_path)
    assert len(df) == 5 and (df["status"] == "ok").sum() == 4

    # "kill" the swarm: lose two finished results; a re-run trains only those (and the failed one)
    before = {s.run_id: _stamp(s) for s in specs}
    specs[0].result_path.unlink()
    specs[4].result_path.unlink()
    specs[2].inject_errors = 0
    res = run_swarm(specs, num_cpus_per_proxy=1, max_retries=1, transient_retries=1, progress=False)
    assert all(r.status == "ok" for r in res)
    retrained = {s.run_id for s in specs if _stamp(s) != before.get(s.run_id)}
    assert retrained == {specs[i].run_id for i in (0, 2, 4)}


def test_worker_that_keeps_dying_is_recorded_as_failed(ray_session, markov_data, markov_tokens, tmp_path):
    from moemix.ray_jobs.swarm import run_swarm

    (spec,) = _specs(markov_data, markov_tokens, tmp_path, 1)
    spec.inject_crashes = 5
    (res,) = run_swarm([spec], num_cpus_per_proxy=1, max_retries=1, transient_retries=0, progress=False)
    assert res.status == "failed" and res.error
    assert json.loads(spec.result_path.read_text())["status"] == "failed"
    assert (spec.run_dir / ".crashes").read_text() == "2"  # first run + one Ray retry
