"""Core behaviour of the hashed embedder and the cluster model (fast)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moemix.domains.assign import assign_parquet
from moemix.domains.cluster import ClusterConfig, ClusterModel, fit_cluster_model
from moemix.domains.embed import EmbedConfig, Embedder
from moemix.errors import MoemixError

sys.path.insert(0, str(Path(__file__).parent))
from corpus import labelled_corpus  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    texts, labels, names = labelled_corpus(120)
    return list(texts), np.array(labels), list(names)


@pytest.fixture(scope="module")
def model(corpus):
    texts, _, names = corpus
    cfg = ClusterConfig(n_domains=len(names), n_fine_clusters=32, min_domain_fraction=0.0)
    return fit_cluster_model(texts, cfg, seed=0)


def test_hashed_embedder_shape_norm_and_batch_independence(corpus):
    texts = corpus[0][:300]
    emb = Embedder(EmbedConfig(dim=64)).fit(texts, seed=1)
    a = emb.embed(texts)
    assert a.shape == (300, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # a document's vector must not depend on which batch it is embedded in
    b = np.concatenate([emb.embed(texts[i : i + 7]) for i in range(0, 300, 7)])
    assert np.array_equal(a, b)
    # same seed -> same embedder; near-duplicate texts are closer than unrelated ones
    a2 = Embedder(EmbedConfig(dim=64)).fit(texts, seed=1).embed(texts)
    assert np.array_equal(a, a2)
    v = emb.embed([texts[0], texts[0] + " extra words", texts[1]])
    assert v[0] @ v[1] > 0.9 and v[0] @ v[1] > v[0] @ v[2]


def test_embedder_save_load_roundtrip(corpus, tmp_path):
    texts = corpus[0][:200]
    emb = Embedder(EmbedConfig(dim=32)).fit(texts)
    emb.save(tmp_path / "e")
    again = Embedder.load(tmp_path / "e")
    assert np.array_equal(emb.embed(texts), again.embed(texts))


def test_model_names_describe_and_shares(model, corpus):
    names = model.domain_names
    assert len(names) == len(corpus[2])
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_]+", n) and n.startswith(f"d{i:02d}") for i, n in enumerate(names))
    desc = model.describe()
    assert [d["name"] for d in desc] == names
    assert abs(sum(d["share"] for d in desc) - 1.0) < 1e-9
    assert all(d["top_terms"] and d["examples"] for d in desc)
    # ordered largest first
    shares = [d["share"] for d in desc]
    assert shares == sorted(shares, reverse=True)


def test_assign_matches_fit_labels_and_save_load(model, corpus, tmp_path):
    texts = corpus[0]
    a = model.assign(texts)
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() < model.n_domains
    # shares recorded at fit time are those of assign() on the same sample
    np.testing.assert_allclose(
        np.bincount(a, minlength=model.n_domains) / len(a), [d["share"] for d in model.describe()]
    )
    model.save(tmp_path / "m")
    loaded = ClusterModel.load(tmp_path / "m")
    assert loaded.domain_names == model.domain_names
    assert np.array_equal(loaded.assign(texts), a)
    # a saved directory contains no temp leftovers
    assert not [p for p in (tmp_path / "m").rglob("*.tmp")]


def test_same_seed_same_model(corpus):
    texts, _, names = corpus
    cfg = ClusterConfig(n_domains=len(names), n_fine_clusters=32, min_domain_fraction=0.0)
    m1 = fit_cluster_model(texts, cfg, seed=3)
    m2 = fit_cluster_model(texts, cfg, seed=3)
    assert m1.domain_names == m2.domain_names
    assert np.array_equal(m1.assign(texts), m2.assign(texts))


def test_fewer_docs_than_clusters_is_a_clear_error():
    with pytest.raises(MoemixError, match=r"12 documents but n_fine_clusters=64"):
        fit_cluster_model([f"doc number {i}" for i in range(12)], ClusterConfig(), seed=0)


def test_load_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(MoemixError, match="cluster_model.json"):
        ClusterModel.load(tmp_path)


def test_assign_parquet_streams_and_keeps_rows(model, corpus, tmp_path):
    texts = corpus[0]
    model.save(tmp_path / "m")
    files = []
    for i, part in enumerate([texts[:250], texts[250:260], texts[260:]]):
        f = tmp_path / "in" / f"part-{i}.parquet"
        f.parent.mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": list(range(len(part))), "text": part}), f, row_group_size=64)
        files.append(f)
    out = assign_parquet(tmp_path / "m", files, tmp_path / "out", batch_size=37)
    assert [p.name for p in out] == [f.name for f in files]
    got = pa.concat_tables([pq.read_table(p) for p in out])
    assert got.column("text").to_pylist() == texts
    assert got.column("domain_id").to_numpy().tolist() == model.assign(texts).tolist()
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["x"]}), bad)
    with pytest.raises(MoemixError, match="no column 'text'"):
        assign_parquet(tmp_path / "m", [bad], tmp_path / "out2")
