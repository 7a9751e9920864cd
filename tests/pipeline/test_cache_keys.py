"""What may and may not change a stage key or a proxy's run id, field by field (after Marin's
test_versioning), and the behaviour users see: a finished swarm is never retrained for a setting that
does not change what proxies compute, and a grown swarm trains only its new proxies."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from moemix._io import stable_hash
from moemix.pipeline.config import load_config
from moemix.pipeline.stages import domains_stage, pretrain_key_config, proxies_key_config, proxies_stage
from moemix.proxies.run import RESULT_NAME, run_sequential

# (section path, value): settings of how a run goes, which no key may see
EXECUTION_ONLY = [
    ("proxies.num_cpus_per_proxy", 4.0),
    ("proxies.num_gpus_per_proxy", 1.0),
    ("proxies.max_retries", 9),
    ("proxies.transient_retries", 5),
    ("proxies.train.num_threads", 7),
    ("proxies.train.log_every", 3),
    ("proxies.train.device", "cpu"),
    ("proxies.train.measure_mfu", True),
    ("proxies.train.micro_batch_size", 4),
    ("proxies.target.domains", {"d0": 1.0}),  # applied at fit time (pretraining scores it: its key sees it)
    ("pretrain.cpus_per_worker", 8.0),
    ("pretrain.checkpoint_every", 7),
    ("pretrain.device_memory_gb", 80.0),
    ("pretrain.parallel.async_checkpoint", True),
    ("pretrain.train.num_threads", 3),
    ("tracking.mlflow_uri", "file:/tmp/mlruns"),  # where a run is reported (tests/report/test_tracking.py)
    ("tracking.mlflow_experiment", "other"),
]
# settings that change what is computed: each must change its stage's key
RESULT = [
    ("proxies.sampler.n_mixtures", 12),
    ("proxies.train.lr", 1e-3),
    ("proxies.train.steps", 13),
    ("proxies.model.d_model", 64),
    ("proxies.curve_points", 3),
    ("proxies.uniform_seeds", 2),
    ("pretrain.train.lr", 1e-3),
    ("pretrain.num_workers", 2),
    ("pretrain.model.n_layers", 2),
]


def _set(cfg, path: str, value):
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _set(getattr(cfg, head), rest, value)})


def _keys(cfg) -> tuple[str, str]:
    return stable_hash(proxies_key_config(cfg)), stable_hash(pretrain_key_config(cfg))


@pytest.fixture
def base_cfg(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return load_config(path)


@pytest.mark.parametrize("path,value", EXECUTION_ONLY, ids=[p for p, _ in EXECUTION_ONLY])
def test_execution_settings_change_no_key(base_cfg, path, value):
    if path.endswith("target.domains"):
        # with one round; rounds: auto may add a batch around the target's optimum (tests/pipeline/
        # test_rounds.py), so there the target keys the swarm, whose proxies are reused all the same
        one = _set(base_cfg, "proxies.rounds", 1)
        target = dataclasses.replace(base_cfg.proxies.target, domains=value)
        assert _keys(_set(one, "proxies.target", target))[0] == _keys(one)[0]
        return
    assert _keys(_set(base_cfg, path, value)) == _keys(base_cfg)


@pytest.mark.parametrize("path,value", RESULT, ids=[p for p, _ in RESULT])
def test_result_settings_change_their_stage_key(base_cfg, path, value):
    i = 0 if path.startswith("proxies") else 1
    assert _keys(_set(base_cfg, path, value))[i] != _keys(base_cfg)[i]


@pytest.mark.slow
def test_finished_swarm_is_reused_and_a_grown_one_trains_only_new_proxies(tmp_path, small_swarm_config):
    path = small_swarm_config
    run = tmp_path / "run"
    trained: list[str] = []

    def runner(specs):
        trained.extend(s.run_id for s in specs if not (s.run_dir / RESULT_NAME).exists())
        run_sequential(specs)

    cfg = load_config(path)
    domains = domains_stage(cfg, run, progress=False)
    proxies_stage(cfg, run, domains, runner)
    assert len(trained) == 8
    first = set(trained)
    for overrides in (
        {"proxies": {"train": {"num_threads": 2, "log_every": 1}}},
        {"proxies": {"num_cpus_per_proxy": 0.5, "max_retries": 0}},
        {"proxies": {"target": {"domains": {domains.domains[0]: 1.0}}}},
    ):
        trained.clear()
        again = proxies_stage(load_config(path, overrides=overrides), run, domains, runner)
        assert trained == [] and again.n_ok == 8, overrides
    trained.clear()
    grown = proxies_stage(
        load_config(path, overrides={"proxies": {"sampler": {"n_mixtures": 12}}}), run, domains, runner
    )
    assert len(trained) == 4 and not first & set(trained)
    assert grown.n_ok == 12
