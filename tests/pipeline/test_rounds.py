"""CLIMB-style rounds in the proxies stage: later batches come from a fit of every run so far."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from moemix.mixing.fit import load_fit
from moemix.pipeline.config import load_config
from moemix.pipeline.stages import domains_stage, proposal_optimum, proxies_stage, round_proposal
from moemix.proxies.run import run_sequential


def _config(tmp_path, tiny_config, **proxies):
    tiny_config["proxies"].update(
        {"scale_check": {"n_mixtures": 0}, "rounds": 2, "round_mixtures": 3, **proxies}
    )
    tiny_config["proxies"]["sampler"]["n_mixtures"] = 6
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return load_config(path)


def test_a_second_round_samples_new_mixtures_from_a_fit_of_the_first(tmp_path, tiny_config):
    cfg = _config(tmp_path, tiny_config)
    domains = domains_stage(cfg, tmp_path / "run", progress=False)
    batches = []

    def runner(specs):
        batches.append(specs)
        run_sequential(specs)

    out = proxies_stage(cfg, tmp_path / "run", domains, runner)
    assert [len(b) for b in batches] == [6 + 2, 3]  # first swarm (+ 2 uniform seeds), then one round
    assert [s.index for s in batches[1]] == [8, 9, 10]
    runs = pd.read_parquet(out.runs_path)
    assert out.n_ok == 11 and list(runs["run_id"])[-3:] == [s.run_id for s in batches[1]]
    wcols = [f"w/{d}" for d in domains.domains]
    first = runs[wcols].to_numpy()[:8]
    for s in batches[1]:
        w = np.array([s.mixture[d] for d in domains.domains])
        assert np.min(np.abs(first - w).max(axis=1)) >= 0.02  # new mixtures, not repeats
    assert json.loads((out.stage.path / "rounds" / "1" / "fit.json").read_text())["n_used"] == 8
    # half the batch (rounded up) checks the proposer's optimum of the round's own fit: the optimum
    # itself, then a Dirichlet draw around it (round 1's concentration 10·D·2): within three of that
    # draw's standard deviations of the optimum in every coordinate
    round_fit = load_fit(out.stage.path / "rounds" / "1")
    new = np.array([[s.mixture[d] for d in domains.domains] for s in batches[1]])
    optimum = proposal_optimum(round_proposal(cfg, domains, round_fit))
    assert np.abs(new[0] - optimum).max() < 1e-6, (new[0], optimum)
    draw_sd = np.sqrt(optimum * (1 - optimum) / (10 * len(optimum) * 2 + 1))
    assert np.all(np.abs(new[1] - optimum) < 3 * draw_sd), (new[1], optimum, draw_sd)
    # the rest is "around the best predicted mixtures": the round's own fit rates it better than every
    # run of the first swarm (a fresh random mixture would not be)
    predicted_new, predicted_first = round_fit.predictor.predict(new), round_fit.predictor.predict(first)
    assert predicted_new[2] < predicted_first.min(), (predicted_new, predicted_first)

    # the batch is a function of the runs before it: a resumed stage asks for the same one, trains nothing
    store = out.stage.path.parent  # RUN_DIR/proxies: runs/<run_id>/ shared by the run dir's swarms
    stamps = {p: p.stat().st_mtime_ns for p in store.glob("runs/*/result.json")}
    assert len(stamps) == 11
    out.stage.manifest_path.unlink()
    again = proxies_stage(cfg, tmp_path / "run", domains, run_sequential)
    assert again.n_ok == 11
    assert {p: p.stat().st_mtime_ns for p in store.glob("runs/*/result.json")} == stamps


def test_with_rounds_the_target_is_part_of_the_swarm(tmp_path, tiny_config):
    """Rounds search around the target's optimum, so the target keys the swarm; without rounds it is
    applied at fit time and the swarm is shared."""
    from moemix._io import stable_hash
    from moemix.pipeline.stages import proxies_key_config

    a = _config(tmp_path, tiny_config)
    other = {"proxies": {"target": {"domains": {"d0": 1.0}}}}
    b = load_config(tmp_path / "tiny.yaml", overrides=other)
    assert stable_hash(proxies_key_config(a)) != stable_hash(proxies_key_config(b))
    one = {"proxies": {"rounds": 1}}
    a1 = load_config(tmp_path / "tiny.yaml", overrides=one)
    b1 = load_config(tmp_path / "tiny.yaml", overrides={"proxies": {**other["proxies"], "rounds": 1}})
    assert stable_hash(proxies_key_config(a1)) == stable_hash(proxies_key_config(b1))
    # auto may add a round around the target's optimum, so the target keys the swarm there too
    auto = {"proxies": {"rounds": "auto"}}
    a2 = load_config(tmp_path / "tiny.yaml", overrides=auto)
    b2 = load_config(tmp_path / "tiny.yaml", overrides={"proxies": {**other["proxies"], "rounds": "auto"}})
    assert stable_hash(proxies_key_config(a2)) != stable_hash(proxies_key_config(b2))


@pytest.mark.parametrize(
    "change",
    [
        {"pretrain": {"train": {"steps": 7}}},  # how far the round fit extrapolates, the epoch caps
        {"pretrain": {"model": {"n_layers": 3}}},  # the fit's model-size ratio
        {"fit": {"predictor": "loglinear"}},  # the fit the batch is sampled around
        {"propose": {"max_weight_above_observed": 0.2}},  # the optimum half of each batch is drawn around
        {"propose": {"min_gain_sigmas": 2.0}},  # auto asks the guard whether to train a round
    ],
    ids=["pretrain-budget", "pretrain-model", "fit", "propose-optimum", "propose-guard"],
)
def test_with_rounds_what_picks_the_next_batch_keys_the_swarm(tmp_path, tiny_config, change):
    """A swarm grown under one pretraining budget (or fit, or proposer) holds the batch that budget
    chose: a run under another is not handed it as if a fresh run would have trained the same proxies.
    With one round nothing outside the proxies' own settings keys them."""
    from moemix._io import stable_hash
    from moemix.pipeline.stages import proxies_key_config

    _config(tmp_path, tiny_config)

    def key(over: dict, rounds) -> str:
        merged = {**over, "proxies": {**over.get("proxies", {}), "rounds": rounds}}
        return stable_hash(proxies_key_config(load_config(tmp_path / "tiny.yaml", overrides=merged)))

    assert key(change, "auto") != key({}, "auto")
    assert key(change, 2) != key({}, 2)
    assert key(change, 1) == key({}, 1)


def _synthetic_fit(tmp_path, target: str, slope: float):
    """A fit of 30 mixtures of three domains whose own losses fall with their weight by ``slope``."""
    from moemix.mixing.fit import FitConfig, fit_runs
    from moemix.mixing.sampling import SamplerConfig, sample_mixtures

    prior = np.full(3, 1 / 3)
    W = sample_mixtures(prior, SamplerConfig(n_mixtures=30, max_epochs=None, min_weight=0.0), 3)
    rng = np.random.default_rng(0)
    df = pd.DataFrame(W, columns=["w/a", "w/b", "w/c"])
    df.insert(0, "run_id", [f"r{i}" for i in range(len(W))])
    df.insert(1, "status", "ok")
    for j, d in enumerate("abc"):
        df[f"loss/{d}"] = 3 - slope * np.sqrt(W[:, j]) + rng.normal(0, 0.01, len(W))
    cfg = FitConfig(predictor="linear", predictor_params={"features": "sqrt"}, plots=False)
    return fit_runs(df, target, ["w/a", "w/b", "w/c"], cfg, tmp_path / target.replace(":", "_")), prior


def test_auto_asks_for_a_second_round_only_when_the_fit_would_leave_the_baselines(tmp_path):
    from moemix.mixing.propose import ProposeConfig, propose
    from moemix.pipeline.stages import another_round_wanted

    # a subset target with a steep law: its optimum is far from uniform, where the swarm has few runs
    fitted, prior = _synthetic_fit(tmp_path, "loss/a:1.0", slope=1.0)
    decision = propose(fitted, prior, ProposeConfig()).decision
    wanted, why = another_round_wanted(decision)
    assert wanted and why.startswith("a second round: a fit of the first swarm"), why
    wanted, why = another_round_wanted(decision, rounds_so_far=2)
    assert wanted and why.startswith("a third round: a fit of the first 2 rounds"), why
    # losses that do not depend on the mixture: the guard ships a baseline, so no round is wanted
    fitted, prior = _synthetic_fit(tmp_path, "loss/a:1.0", slope=0.0)
    wanted, why = another_round_wanted(propose(fitted, prior, ProposeConfig()).decision)
    assert not wanted and "would ship uniform" in why, why


def test_auto_rounds_follow_the_decision_and_reuse_the_first_swarm(tmp_path, tiny_config, monkeypatch):
    import moemix.pipeline.stages as stages
    import moemix.proxies.config as proxies_config

    cfg = _config(tmp_path, tiny_config, rounds="auto")
    assert cfg.proxies.max_rounds == 2
    # the stage asks before every extra round up to the cap; a cap of three exercises the second question
    monkeypatch.setattr(proxies_config, "AUTO_MAX_ROUNDS", 3)
    assert cfg.proxies.max_rounds == 3
    domains = stages.domains_stage(cfg, tmp_path / "run", progress=False)
    batches = []

    def runner(specs):
        batches.append(specs)
        run_sequential(specs)

    monkeypatch.setattr(stages, "another_round_wanted", lambda *a: (False, "no second round: test"))
    out = stages.proxies_stage(cfg, tmp_path / "run", domains, runner)
    assert [len(b) for b in batches] == [8]
    assert out.stage.manifest()["outputs"]["rounds"] == {"run": 1, "auto": "no second round: test"}
    assert json.loads((out.stage.path / "swarm.json").read_text())["rounds"] == 1

    # the decision's fit is a fit of every run the swarm holds: the fit stage copies it, fitting nothing
    import moemix.mixing.fit as fit_module

    fits = []
    real_fit_runs = fit_module.fit_runs
    monkeypatch.setattr(fit_module, "fit_runs", lambda *a, **k: fits.append(1) or real_fit_runs(*a, **k))
    fitted = stages.fit_stage(cfg, tmp_path / "run", domains, out)
    round_dir = out.stage.path / "rounds" / "1"
    assert fits == []
    for name in ("predictor.json", "cv.json", "fit.json", "plots/pred_vs_actual.png"):
        assert (fitted.stage.path / name).read_bytes() == (round_dir / name).read_bytes(), name
    # a round fit of other inputs is not: the fit stage fits the runs itself
    (round_dir / stages.FIT_INPUTS).write_text(json.dumps({"key": "other inputs"}))
    fitted.stage.manifest_path.unlink()
    stages.fit_stage(cfg, tmp_path / "run", domains, out)
    assert fits == [1]

    # a second round is wanted, a third is not: the decision is asked again after each round, of a
    # fit that has seen that round
    asked = []

    def decide(decision, rounds_so_far):
        asked.append((rounds_so_far, seen[-1]))
        return (rounds_so_far == 1, f"round {rounds_so_far + 1}: test")

    seen = []
    real_proposal = stages.round_proposal
    monkeypatch.setattr(
        stages,
        "round_proposal",
        lambda c, d, fitted: seen.append(fitted.n_rows) or real_proposal(c, d, fitted),
    )

    batches.clear()
    out.stage.manifest_path.unlink()
    monkeypatch.setattr(stages, "another_round_wanted", decide)
    out = stages.proxies_stage(cfg, tmp_path / "run", domains, runner)
    # the first swarm is not trained again (its proxies are in the store): only the new batch is
    assert [len(b) for b in batches] == [8, 3]
    assert asked == [(1, 8), (2, 11)]
    assert sum(1 for _ in out.stage.path.parent.glob("runs/*/result.json")) == 11
    assert out.n_ok == 11
    assert out.stage.manifest()["outputs"]["rounds"] == {"run": 2, "auto": "round 3: test"}

    # wanted every time: auto stops at its cap, three rounds
    batches.clear()
    out.stage.manifest_path.unlink()
    monkeypatch.setattr(stages, "another_round_wanted", lambda *a: (True, "wanted: test"))
    out = stages.proxies_stage(cfg, tmp_path / "run", domains, runner)
    assert [len(b) for b in batches] == [8, 3, 3]
    assert out.n_ok == 14
    assert out.stage.manifest()["outputs"]["rounds"] == {"run": 3, "auto": "wanted: test"}


def test_a_round_fit_that_fails_stops_auto_but_not_a_fixed_round_count(tmp_path, tiny_config, monkeypatch):
    """Under auto the fit and propose stages meet the same problem and report it, so the proxies stage
    completes with the first swarm and says why no round followed; ``rounds: 2`` asked for a round that
    cannot be sampled, which is an error there and then."""
    import pytest

    import moemix.pipeline.stages as stages
    from moemix.errors import MoemixError

    def broken_fit(*args, **kwargs):
        raise MoemixError("too few runs: test")

    monkeypatch.setattr(stages, "round_fit", broken_fit)
    cfg = _config(tmp_path, tiny_config, rounds="auto")
    domains = stages.domains_stage(cfg, tmp_path / "run", progress=False)
    out = stages.proxies_stage(cfg, tmp_path / "run", domains, run_sequential)
    assert out.n_ok == 8
    why = "no second round: a fit of the first swarm failed (too few runs: test)"
    assert out.stage.manifest()["outputs"]["rounds"] == {"run": 1, "auto": why}

    fixed = _config(tmp_path, tiny_config, rounds=2)
    with pytest.raises(MoemixError, match="too few runs: test"):
        stages.proxies_stage(fixed, tmp_path / "run", domains, run_sequential)
