"""Which executor the pipeline gives the domains stage: this process for small local inputs, Ray Data
on a cluster, for big inputs, or when asked."""

from __future__ import annotations

import pytest

from moemix.pipeline.config import load_config


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one document"}\n')
    return tmp_path / "a.jsonl"


def _executor(corpus, monkeypatch, **domains):
    from moemix.ray_jobs import pipeline

    cfg = load_config(overrides={"domains": {"sources": [{"path": str(corpus)}], **domains}})
    return pipeline._domains_executor(cfg, pipeline._LazyRay(cfg))


def test_small_local_input_runs_in_process_unless_ray_is_asked_for(corpus, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _executor(corpus, monkeypatch) is None
    assert _executor(corpus, monkeypatch, executor="local") is None
    assert callable(_executor(corpus, monkeypatch, executor="ray"))


def test_a_cluster_or_a_big_input_gets_ray_data(corpus, monkeypatch):
    from moemix.ray_jobs import pipeline

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert callable(_executor(corpus, monkeypatch))
    assert _executor(corpus, monkeypatch, executor="local") is None
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(pipeline, "AUTO_RAY_DOMAINS_BYTES", 5)  # the 25-byte file is now "big"
    assert callable(_executor(corpus, monkeypatch))
