"""``moemix plan`` and the pipeline's refusal of a pretraining run that cannot fit its declared memory."""

from __future__ import annotations

import re

import pytest
import yaml

from moemix.cli import main
from moemix.configtools import from_dict
from moemix.pipeline.config import Config, load_config, preset_dict
from moemix.pipeline.memory import check_pretrain_memory, pretrain_plan, proxy_plan
from moemix.training.memory_plan import GIB


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip().splitlines()


def _config(tmp_path, **pretrain):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "demo", "pretrain": pretrain}))
    return str(path)


def test_plan_on_the_demo_preset(capsys):
    code, out, err = _run(capsys, ["plan"])
    assert code == 0 and err == []
    header, *rows = out.splitlines()
    assert header.split()[-2:] == ["proxy", "pretrain"]
    labels = {r.split("  ")[0].strip() for r in rows}
    assert {"params", "grads", "optimizer", "activations", "needs", "device memory", "fits"} <= labels
    cfg = load_config()
    assert f"{cfg.pretrain.num_workers} (1 x {cfg.pretrain.num_workers})" in out  # FSDP over every worker


def test_plan_on_the_cluster_preset_fits_80_gb(capsys):
    """The acceptance check: the cluster preset declares 80 GiB GPUs and its plan fits them."""
    code, out, err = _run(capsys, ["plan", "cluster-gpu"])
    assert code == 0 and err == []
    fits = next(r for r in out.splitlines() if r.startswith("fits"))
    assert fits.split()[-4] == "yes," and fits.endswith("GiB spare"), fits
    cfg = from_dict(Config, preset_dict("cluster-gpu"))
    plan = pretrain_plan(cfg)
    assert cfg.pretrain.device_memory_gb == 80
    assert (plan.world_size, plan.mesh) == (64, (8, 8))  # 8 nodes x 8 GPUs, sharded within a node
    assert plan.total <= 0.85 * 80 * GIB  # and leaves room for what the plan does not count
    assert proxy_plan(cfg).total <= 0.85 * 80 * GIB  # one proxy per GPU fits too


def test_plan_refuses_what_cannot_fit_with_one_line(tmp_path, capsys):
    code, out, err = _run(capsys, ["plan", _config(tmp_path, device_memory_gb=0.01)])
    assert code == 2
    assert len(err) == 1, err
    assert re.match(r"moemix: error: pretrain: needs [\d.]+ [MG]iB per device \(params ", err[0]), err[0]
    assert "more than pretrain.device_memory_gb 0.01; " in err[0]
    assert "NO, " in out  # the table still shows where the memory goes


def test_plan_names_the_evaluation_when_it_is_what_does_not_fit(capsys):
    code, _, err = _run(capsys, ["plan", "cluster-gpu", "--set", "pretrain.train.eval_batch_size=32"])
    assert code == 2 and len(err) == 1
    assert "pretrain: the final evaluation needs" in err[0] and err[0].endswith(
        "lower pretrain.train.eval_batch_size"
    )


def test_run_refuses_before_anything_launches(tmp_path, capsys, monkeypatch):
    import moemix.ray_jobs.pipeline as pipeline

    started = []  # Ray may already be up for other tests of this session: watch for this run starting it
    monkeypatch.setattr(pipeline, "init_ray", lambda *a, **k: started.append(1))
    run_dir = tmp_path / "run"
    code, _, err = _run(capsys, ["run", _config(tmp_path, device_memory_gb=0.01), "--out", str(run_dir)])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("moemix: error: pretrain: needs ")
    assert not run_dir.exists()  # nothing written, no stage started
    assert not started


def test_run_pipeline_checks_only_when_it_pretrains(tmp_path):
    from moemix.errors import MoemixError
    from moemix.ray_jobs.pipeline import run_pipeline

    cfg = load_config(_config(tmp_path, device_memory_gb=0.01))
    with pytest.raises(MoemixError, match="^pretrain: needs .* more than pretrain.device_memory_gb 0.01; "):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    cfg.pretrain.enabled = False  # a run without pretraining is not refused for it (not run here)
    check_pretrain_memory(cfg)


@pytest.mark.parametrize("value", [0, -1])
def test_device_memory_must_be_positive(tmp_path, capsys, value):
    code, _, err = _run(capsys, ["config", _config(tmp_path, device_memory_gb=value)])
    assert code == 2 and len(err) == 1
    assert "pretrain.device_memory_gb must be > 0 or null" in err[0]


def test_config_prints_a_preset_by_name_without_its_cluster_paths(capsys):
    # the help says "config YAML or preset name": a preset's sources name a cluster's storage, absent here
    code, out, err = _run(capsys, ["config", "cluster-gpu", "--set", "pretrain.max_concurrent_runs=2"])
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["pretrain"]["num_workers"] == 64 and printed["pretrain"]["max_concurrent_runs"] == 2
    assert printed["domains"]["sources"][0]["path"] == "/mnt/shared/corpora/web/*.parquet"
    code, _, err = _run(capsys, ["config", "no-such-preset"])
    assert code == 2 and err == ["moemix: error: config file not found: no-such-preset"]
