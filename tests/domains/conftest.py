"""Fixtures for the domains stage: the real demo corpus (built once per session) and small subsets of it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moemix.domains.config import DomainsConfig
from moemix.domains.tokenizer import TokenizerConfig
from moemix.pipeline.demo_corpus import DemoCorpus, build_demo_corpus


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> DemoCorpus:
    # reuse a developer's cache when there is one; otherwise build into the session tmp dir
    cache = os.environ.get("MOEMIX_CACHE")
    root = Path(cache) / "demo_corpus" if cache else tmp_path_factory.mktemp("demo_cache")
    return build_demo_corpus(root)


def write_subset(
    corpus: DemoCorpus, out: Path, per_domain: int, max_chars: int = 1500, domains: list[str] | None = None
) -> Path:
    """One parquet file with the first ``per_domain`` docs of each domain (texts cut to ``max_chars``)."""
    texts, sources, ids = [], [], []
    for d in domains or corpus.domains:
        t = pq.read_table(corpus.files[d]).slice(0, per_domain).to_pydict()
        texts += [x[:max_chars] for x in t["text"]]
        sources += t["source"]
        ids += t["id"]
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, "source": sources, "id": ids}), out)
    return out


@pytest.fixture(scope="session")
def subset_writer():
    """``write_subset`` as a fixture: test modules can't import a conftest by name reliably."""
    return write_subset


@pytest.fixture(scope="session")
def demo_subset(demo_corpus, tmp_path_factory) -> Path:
    """~60 real docs per demo domain, a few hundred KB: enough for every end-to-end test."""
    return write_subset(demo_corpus, tmp_path_factory.mktemp("subset") / "subset.parquet", per_domain=60)


def _small_cfg(**kw) -> DomainsConfig:
    kw.setdefault("tokenizer", TokenizerConfig(vocab_size=400, train_sample_bytes=200_000))
    kw.setdefault("valid_fraction", 0.1)
    kw.setdefault("min_docs_per_domain", 5)
    return DomainsConfig(**kw)


@pytest.fixture(scope="session")
def small_cfg():
    """Factory of DomainsConfigs sized for tests: tiny BPE, 10% validation."""
    return _small_cfg
