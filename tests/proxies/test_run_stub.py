"""run_proxy / collect_runs / resume / failure handling, in-process on the stub model."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest

import moemix.proxies.run as run_mod
from moemix.proxies.run import collect_runs, run_proxy, run_sequential, scale_agreement, specs_for_mixtures
from moemix.token_shards import DomainTokens
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig
from moemix.training.loop import train
from stub_lm import StubConfig, StubLM


@pytest.fixture()
def stub_train(monkeypatch):
    monkeypatch.setattr(run_mod, "train", functools.partial(train, model_factory=StubLM))


def _specs(markov_data, markov_tokens, out, n=5, **train_kw):
    rng = np.random.default_rng(0)
    mixtures = rng.dirichlet(np.ones(4), size=n)
    tc = TrainConfig(
        steps=12, batch_size=4, seq_len=32, eval_tokens=256, log_every=6, measure_mfu=False, **train_kw
    )
    return specs_for_mixtures(
        mixtures,
        model=StubConfig(),
        train_cfg=tc,
        target=TargetConfig(),
        tokens_dir=markov_tokens,
        out_dir=out,
        data=markov_data,
    )


def test_run_ids_are_stable_and_ignore_execution_settings(markov_data, markov_tokens, tmp_path):
    a = _specs(markov_data, markov_tokens, tmp_path)
    b = _specs(markov_data, markov_tokens, tmp_path / "elsewhere", num_threads=2)
    assert [s.run_id for s in a] == [s.run_id for s in b]
    assert len({s.run_id for s in a}) == 5
    c = _specs(markov_data, markov_tokens, tmp_path, lr=1e-3)
    assert not {s.run_id for s in a} & {s.run_id for s in c}


def _proxies_stage(markov_tokens, run_dir, runner, **train_kw):
    """``proxies_stage`` as ``moemix run`` calls it, on the Markov domains (a domains stage in place)."""
    from moemix.mixing.sampling import SamplerConfig
    from moemix.pipeline.config import Config
    from moemix.pipeline.stage_dir import Stage
    from moemix.pipeline.stages import DomainsOutput, proxies_stage
    from moemix.proxies.config import ProxiesConfig

    data = DomainTokens(markov_tokens)
    domains = DomainsOutput(
        Stage("domains", "markov", markov_tokens.parent),
        data.domains,
        {d: data.n_tokens("train", d) for d in data.domains},
    )
    tc = TrainConfig(
        steps=6, batch_size=4, seq_len=32, eval_tokens=128, log_every=6, measure_mfu=False, **train_kw
    )
    cfg = Config(
        proxies=ProxiesConfig(
            sampler=SamplerConfig(n_mixtures=3, max_epochs=None), train=tc, uniform_seeds=1, curve_points=1
        )
    )
    return proxies_stage(cfg, run_dir, domains, swarm_runner=runner)


def test_changing_num_threads_reuses_the_finished_swarm(stub_train, markov_tokens, tmp_path):
    """What a user hits: `moemix run` again with only proxies.train.num_threads changed must find the swarm
    done (same stage directory, no proxy trained), while an outcome setting (lr) does start a new swarm."""
    trained: list[str] = []

    def runner(specs):
        trained.extend(s.run_id for s in specs)
        run_sequential(specs)

    first = _proxies_stage(markov_tokens, tmp_path, runner, num_threads=1)
    assert len(trained) == 3 and first.n_ok == 3
    trained.clear()
    lr = _proxies_stage(markov_tokens, tmp_path, runner, num_threads=1, lr=1e-3)
    assert lr.stage.path != first.stage.path and len(trained) == 3  # control: the key does see the outcome
    trained.clear()
    again = _proxies_stage(markov_tokens, tmp_path, runner, num_threads=2)
    assert again.stage.path == first.stage.path
    assert trained == []


def test_runs_write_results_table_and_skip_finished_on_rerun(
    stub_train, markov_data, markov_tokens, tmp_path
):
    specs = _specs(markov_data, markov_tokens, tmp_path)
    res = run_sequential(specs[:3])
    assert all(r.status == "ok" for r in res)
    stamps = {s.run_id: json.loads(s.result_path.read_text())["finished_at"] for s in specs[:3]}
    # "crash" after 3 of 5, and lose one finished result as well
    specs[1].result_path.unlink()
    res = run_sequential(specs)
    retrained = {
        s.run_id
        for s in specs
        if json.loads(s.result_path.read_text())["finished_at"] != stamps.get(s.run_id)
    }
    assert retrained == {specs[i].run_id for i in (1, 3, 4)}
    df = collect_runs(tmp_path)
    assert (tmp_path / "runs.parquet").exists()
    pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / "runs.parquet"))
    assert list(df.columns[:4]) == ["run_id", "status", "error", "scale"]
    for d in markov_data.domains:
        assert {f"w/{d}", f"loss/{d}", f"bpb/{d}"} <= set(df.columns)
    assert list(df["run_id"]) == [s.run_id for s in specs]  # swarm order
    np.testing.assert_allclose(df[[f"w/d{i}" for i in range(4)]].sum(axis=1), 1.0)
    assert (df["tokens"] == 12 * 4 * 32).all() and (df["params_total"] > 0).all()
    np.testing.assert_allclose(df["target"], df[[f"loss/d{i}" for i in range(4)]].mean(axis=1))


def test_transient_failure_is_retried_then_recorded(stub_train, markov_data, markov_tokens, tmp_path):
    flaky, broken, capped = _specs(markov_data, markov_tokens, tmp_path, n=3)
    flaky.inject_errors = 1
    broken.inject_errors = 5
    r = run_proxy(flaky, transient_retries=1)
    assert r.status == "ok" and r.attempts == 2
    r = run_proxy(broken, transient_retries=2)
    assert r.status == "failed" and r.attempts == 3 and "injected transient failure" in r.error
    # a deterministic input error (epoch cap) is not retried
    capped.train = TrainConfig(steps=400, batch_size=8, seq_len=32, max_epochs=0.5, measure_mfu=False)
    capped.mixture = {"d0": 0.0, "d1": 0.0, "d2": 0.0, "d3": 1.0}
    r = run_proxy(capped, transient_retries=3)
    assert r.status == "failed" and r.attempts == 1 and "domain 'd3'" in r.error
    df = collect_runs(tmp_path)
    assert sorted(df["status"]) == ["failed", "failed", "ok"]
    assert df.loc[df["status"] == "failed", "target"].isna().all()
    assert (df.loc[df["status"] == "failed", "error"].str.len() > 0).all()
    # failed runs are retried on the next swarm invocation
    broken.inject_errors = 0
    assert run_proxy(broken).status == "ok"


def test_scale_agreement_matches_rows_by_mixture():
    w = np.random.default_rng(1).dirichlet(np.ones(3), size=6)
    rows = []
    for scale, noise in (("base", 0.0), ("large", 0.01)):
        for i, row in enumerate(w):
            rows.append(
                {
                    "status": "ok",
                    "scale": scale,
                    **{f"w/d{j}": x for j, x in enumerate(row)},
                    "target": row[0] * (2 if scale == "large" else 1) + noise * i,
                }
            )
    out = scale_agreement(pd.DataFrame(rows))
    assert out["n"] == 6 and out["spearman"] == pytest.approx(1.0)


def test_curves_record_every_domain_along_training_and_end_at_the_final_losses(
    stub_train, markov_data, markov_tokens, tmp_path
):
    specs = _specs(markov_data, markov_tokens, tmp_path, n=2)
    for s in specs:
        s.curve_points = 4
    run_sequential(specs)
    runs = collect_runs(tmp_path)
    curves = pd.read_parquet(tmp_path / "curves.parquet")
    assert len(curves) == 2 * 4
    assert list(curves[curves["run_id"] == specs[0].run_id]["step"]) == [3, 6, 9, 12]
    np.testing.assert_allclose(curves["frac"].unique(), [0.25, 0.5, 0.75, 1.0])
    last = curves[curves["step"] == 12].set_index("run_id").loc[runs["run_id"]]
    for d in markov_data.domains:
        np.testing.assert_allclose(last[f"loss/{d}"].to_numpy(), runs[f"loss/{d}"].to_numpy())
    # the stub learns: the curve falls between its first and last evaluation
    first = curves[curves["step"] == 3].set_index("run_id").loc[runs["run_id"]]
    cols = [f"loss/{d}" for d in markov_data.domains]
    assert first[cols].to_numpy().mean() > last[cols].to_numpy().mean() + 0.01


def test_swarm_adds_uniform_seeds_and_its_run_ids_ignore_a_weighted_target(
    markov_data, markov_tokens, tmp_path
):
    from moemix.proxies.config import ProxiesConfig
    from moemix.proxies.run import make_specs

    mixtures = np.vstack([np.full(4, 0.25), np.random.default_rng(0).dirichlet(np.ones(4), size=3)])
    cfg = ProxiesConfig(
        train=TrainConfig(steps=12, batch_size=4, seq_len=32, measure_mfu=False), uniform_seeds=3
    )
    specs = make_specs(cfg, markov_data.domains, mixtures, markov_tokens, tmp_path)
    assert len(specs) == 4 + 2
    extra = specs[4:]
    assert [s.train.seed for s in extra] == [1, 2] and all(s.mixture == specs[0].mixture for s in extra)
    assert len({s.run_id for s in specs}) == 6
    weighted = ProxiesConfig(train=cfg.train, uniform_seeds=3, target=TargetConfig(domains={"d0": 1.0}))
    assert [
        s.run_id for s in make_specs(weighted, markov_data.domains, mixtures, markov_tokens, tmp_path)
    ] == [s.run_id for s in specs]
    external = ProxiesConfig(
        train=cfg.train, uniform_seeds=3, target=TargetConfig(external=str(markov_tokens))
    )
    assert not {
        s.run_id for s in make_specs(external, markov_data.domains, mixtures, markov_tokens, tmp_path)
    } & {s.run_id for s in specs}


def test_scale_agreement_counts_a_mixture_trained_under_several_seeds_once():
    w = np.random.default_rng(2).dirichlet(np.ones(3), size=4)
    rows = [
        {"status": "ok", "scale": s, **{f"w/d{j}": x for j, x in enumerate(row)}, "target": row[0] + off}
        for s, off in (("base", 0.0), ("large", 0.5))
        for row in w
    ]
    rows += [{**rows[0], "target": rows[0]["target"] + 0.01}, {**rows[0], "target": rows[0]["target"] - 0.01}]
    out = scale_agreement(pd.DataFrame(rows))
    assert out["n"] == 4 and out["spearman"] == pytest.approx(1.0)
