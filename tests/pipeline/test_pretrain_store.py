"""The pretrain stage's run store: a baseline is pretrained once per model, budget and tokens, whatever
mixture it is compared with and whatever weighted-domain target scores it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moemix.pipeline.config import load_config
from moemix.pipeline.run_status import run_status
from moemix.pipeline.stages import domains_stage, given_mixture, pretrain_stage


class FakeRunner:
    """Trains nothing: writes a result whose per-domain losses are a function of the mixture (and a
    target loss no target gives, so the stage must compute its own), skipping finished runs as the
    Ray runner does."""

    def __init__(self) -> None:
        self.trained: list[dict[str, float]] = []

    def __call__(self, mixtures, tokens_dir, run_dirs):
        out = {}
        for name, mix in mixtures.items():
            path = Path(run_dirs[name])
            if not (path / "result.json").exists():
                self.trained.append(mix)
                path.mkdir(parents=True, exist_ok=True)
                loss = {d: 5.0 - w for d, w in mix.items()}
                (path / "metrics.jsonl").write_text(
                    json.dumps({"step": 10, "loss": 4.5, "total_steps": 10}) + "\n"
                )
                (path / "model.safetensors").write_bytes(b"")
                result = {"mixture": mix, "loss": loss, "bpb": loss, "target_loss": 99.0, "tokens": 1}
                (path / "result.json").write_text(json.dumps(result))
            out[name] = json.loads((path / "result.json").read_text())
        return out


@pytest.fixture
def run(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    cfg = load_config(path)
    return path, cfg, domains_stage(cfg, tmp_path / "run", progress=False)


def _mixture_file(tmp_path: Path, domains: list[str], first: float) -> Path:
    rest = (1 - first) / (len(domains) - 1)
    path = tmp_path / f"mix-{first}.json"
    path.write_text(json.dumps({d: (first if i == 0 else rest) for i, d in enumerate(domains)}))
    return path


def test_a_new_mixture_pretrains_only_itself_and_reuses_the_baselines(tmp_path, run):
    cfg_path, cfg, domains = run
    names = domains.domains
    runner = FakeRunner()
    a = pretrain_stage(
        cfg, tmp_path / "run", domains, given_mixture(_mixture_file(tmp_path, names, 0.5), domains), runner
    )
    assert len(runner.trained) == 3  # chosen, uniform, natural
    b = pretrain_stage(
        cfg, tmp_path / "run", domains, given_mixture(_mixture_file(tmp_path, names, 0.6), domains), runner
    )
    assert b.stage.key != a.stage.key
    assert len(runner.trained) == 4 and abs(runner.trained[-1][names[0]] - 0.6) < 1e-9
    for name in ("uniform", "natural"):
        assert b.comparison[name]["run_dir"] == a.comparison[name]["run_dir"], name
        assert Path(b.comparison[name]["run_dir"]).parent == tmp_path / "run" / "pretrain" / "runs"
    assert b.comparison["chosen"]["run_dir"] != a.comparison["chosen"]["run_dir"]
    # the stage names its runs for the report and `moemix status`, which read them through runs.json
    status = {s.name: s for s in run_status(tmp_path / "run").stages}["pretrain"]
    assert sorted(status.detail["runs"]) == ["chosen", "natural", "uniform"]
    assert all(r["done"] for r in status.detail["runs"].values())


def test_a_retargeted_comparison_scores_the_same_runs_under_its_own_target(tmp_path, run):
    cfg_path, cfg, domains = run
    names = domains.domains
    runner = FakeRunner()
    mix = given_mixture(_mixture_file(tmp_path, names, 0.5), domains)
    mean = pretrain_stage(cfg, tmp_path / "run", domains, mix, runner)
    retarget = load_config(
        cfg_path, overrides={"proxies": {"target": {"domains": {names[0]: 3.0, names[1]: 1.0}}}}
    )
    sub = pretrain_stage(retarget, tmp_path / "run", domains, mix, runner)
    assert sub.stage.key != mean.stage.key and len(runner.trained) == 3  # nothing trained again
    for name in ("chosen", "uniform", "natural"):
        loss = sub.comparison[name]["loss"]
        assert sub.comparison[name]["target_loss"] == pytest.approx(
            0.75 * loss[names[0]] + 0.25 * loss[names[1]]
        )
        assert mean.comparison[name]["target_loss"] == pytest.approx(sum(loss.values()) / len(names))
    # an external target set is evaluated inside the run: another one is another run
    (tmp_path / "ext").mkdir()
    external = load_config(cfg_path, overrides={"proxies": {"target": {"external": str(tmp_path / "ext")}}})
    pretrain_stage(external, tmp_path / "run", domains, mix, runner)
    assert len(runner.trained) == 6
