from __future__ import annotations

import json
import os

import pytest

from moemix._io import atomic_path, stable_hash, write_json_atomic
from moemix.pipeline.stage_dir import stage_for


def test_key_depends_on_config_and_inputs(tmp_path):
    a = stage_for(tmp_path, "fit", {"x": 1}, {"proxies": "k1"})
    assert a.key == stage_for(tmp_path, "fit", {"x": 1}, {"proxies": "k1"}).key
    assert a.key != stage_for(tmp_path, "fit", {"x": 2}, {"proxies": "k1"}).key
    assert a.key != stage_for(tmp_path, "fit", {"x": 1}, {"proxies": "k2"}).key
    assert a.path == tmp_path / "fit" / a.key


def test_complete_only_after_manifest(tmp_path):
    st = stage_for(tmp_path, "domains", {"a": 1})
    st.start()
    (st.path / "partial.bin").write_bytes(b"x")
    assert not st.is_complete()
    # an interrupted attempt is wiped by a fresh start
    st.start(fresh=True)
    assert not (st.path / "partial.bin").exists()
    st.complete({"n": 3})
    assert st.is_complete() and st.manifest()["outputs"] == {"n": 3}
    # a complete stage is never wiped
    st.start(fresh=True)
    assert st.is_complete()


def test_manifest_records_the_stages_it_read(tmp_path):
    fit = stage_for(tmp_path, "fit", {"a": 1}, {"proxies": "p1"})
    prop = stage_for(tmp_path, "propose", {"b": 2}, {"fit": fit.key})
    prop.start()
    prop.complete({})
    assert prop.manifest()["inputs"] == {"fit": fit.key}


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash("x")) == 16
    assert os.sep not in stable_hash("x")


def test_scale_transfer_summary_warns_when_ranks_do_not_transfer():
    from moemix.pipeline.stages import scale_transfer_summary

    assert scale_transfer_summary(None) is None
    good = scale_transfer_summary({"target": {"n": 8, "spearman": 0.95}})
    assert good == {"spearman": 0.95, "n": 8, "warning": None}
    low = scale_transfer_summary({"target": {"n": 8, "spearman": 0.3}})
    assert low["spearman"] == 0.3 and "transfer poorly" in low["warning"]
    few = scale_transfer_summary({"target": {"n": 2, "spearman": float("nan")}})
    assert few["spearman"] is None and "only 2 mixtures" in few["warning"]


def test_pretrain_key_ignores_execution_settings_only():
    """Threads, checkpoint cadence and the declared device memory change how pretraining runs, not its
    result: the finished stage is reused. The learning rate and the worker count are part of the result."""
    import dataclasses

    from moemix._io import stable_hash
    from moemix.pipeline.config import load_config
    from moemix.pipeline.stages import pretrain_key_config

    cfg = load_config()
    key = stable_hash(pretrain_key_config(cfg))
    p = cfg.pretrain
    same = [
        dataclasses.replace(
            p,
            cpus_per_worker=4,
            checkpoint_every=7,
            device_memory_gb=80.0,
            train=dataclasses.replace(p.train, num_threads=3, log_every=5),
        )
    ]
    other = [
        dataclasses.replace(p, train=dataclasses.replace(p.train, lr=p.train.lr / 2)),
        dataclasses.replace(p, num_workers=p.num_workers + 2),
    ]
    for q in same:
        assert stable_hash(pretrain_key_config(dataclasses.replace(cfg, pretrain=q))) == key
    for q in other:
        assert stable_hash(pretrain_key_config(dataclasses.replace(cfg, pretrain=q))) != key
