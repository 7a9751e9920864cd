from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import normalized_mutual_info_score

from moemix.domains.cluster import ClusterConfig, ClusterModel
from moemix.domains.embed import EmbedConfig
from moemix.domains.ingest import SourceConfig
from moemix.domains.routing import DomainAssigner
from moemix.domains.stage import run_domains
from moemix.domains.units import run_in_process
from moemix.errors import MoemixError


def _first_texts(out, domain: str, n: int) -> list[str]:
    f = sorted((out / "text" / "train" / domain).glob("*.parquet"))[0]
    return pq.read_table(f).column("text").to_pylist()[:n]


def _cluster_cfg(n_domains: int, n_fine: int = 24) -> ClusterConfig:
    # small embeddings and one k-means init: these tests check the stage's plumbing, not clustering quality
    return ClusterConfig(
        n_domains=n_domains,
        n_fine_clusters=n_fine,
        sample_size=2000,
        min_domain_fraction=0.0,
        n_init=1,
        embed=EmbedConfig(dim=48, n_features=2**14),
    )


@pytest.fixture(scope="module")
def cluster_run(demo_subset, tmp_path_factory, small_cfg):
    out = tmp_path_factory.mktemp("cluster") / "run"
    calls = []

    def recording_executor(fn, units, *, what=""):
        calls.append((what, len(units)))
        return run_in_process(fn, units, what=what)

    # the label column is present but must be ignored in cluster mode
    cfg = small_cfg(
        sources=[SourceConfig(path=str(demo_subset), label_column="source", id_column="id")],
        mode="cluster",
        cluster=_cluster_cfg(7),
    )
    res = run_domains(cfg, out, seed=0, executor=recording_executor, progress=False)
    return cfg, out, res, calls


@pytest.mark.slow
def test_cluster_mode_recovers_hidden_domains(cluster_run, demo_subset):
    cfg, out, res, calls = cluster_run
    # the injected executor ran every step, one work unit per file or partition
    assert [w for w, _ in calls] == ["read", "dedup", "route", "write"]
    assert calls[0][1] == 1 and all(n == calls[1][1] for _, n in calls[1:])
    model = ClusterModel.load(out / "clusters")
    assert set(res.domains) <= set(model.domain_names)
    assert 4 <= len(res.domains) <= 7
    a = pq.read_table(out / "assignments").to_pydict()
    truth = dict(zip(*pq.read_table(demo_subset, columns=["id", "source"]).to_pydict().values()))
    # purity: most documents of a cluster domain share one hidden label (chance level is ~0.15)
    by_dom: dict[str, Counter] = {}
    for i, d in zip(a["id"], a["domain"]):
        by_dom.setdefault(d, Counter())[truth[i]] += 1
    purity = sum(c.most_common(1)[0][1] for c in by_dom.values()) / len(a["id"])
    nmi = normalized_mutual_info_score([truth[i] for i in a["id"]], a["domain"])
    print(f"purity={purity:.3f} nmi={nmi:.3f}")
    assert purity > 0.5 and nmi > 0.4, by_dom
    assert set(a["label"]) == {None}  # cluster mode has no labels (the hidden one is not leaked)
    stats = json.loads(res.stats_path.read_text())
    assert stats["mode"] == "cluster"
    for d in stats["domains"]:
        assert d["top_terms"] and d["examples"]
        assert d["docs"]["train"] > 0 and d["docs"]["valid"] > 0
    # the saved model assigns the written texts to the domain they were written under
    for d in res.domains:
        files = sorted((out / "text" / "train" / d).glob("*.parquet"))
        texts = pq.read_table(files[0]).column("text").to_pylist()[:20]
        assert all(model.domain_names[i] == d for i in model.assign(texts))
    assert not (out / "_staging").exists()
    assigner = DomainAssigner(out)
    for d in res.domains:
        t = _first_texts(out, d, 20)
        assert assigner.assign(t, ["ignored"] * len(t)) == [d] * len(t)


@pytest.mark.slow
def test_cluster_mode_is_deterministic(cluster_run, tmp_path):
    cfg, out, _, _ = cluster_run
    run_domains(cfg, tmp_path / "again", seed=0, progress=False)
    again = tmp_path / "again"
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert any(f.suffix == ".bin" for f in files) and any(f.parts[0] == "assignments" for f in files)
    for f in files:
        assert (out / f).read_bytes() == (again / f).read_bytes(), f


@pytest.mark.slow
def test_label_plus_cluster_splits_each_label(demo_corpus, tmp_path, small_cfg, subset_writer):
    write_subset = subset_writer
    path = write_subset(
        demo_corpus, tmp_path / "two.parquet", per_domain=120, domains=["python_code", "docstrings"]
    )
    cfg = small_cfg(
        sources=[SourceConfig(path=str(path), label_column="source", id_column="id")],
        mode="label+cluster",
        split_labels=2,
        cluster=_cluster_cfg(3, n_fine=12),
    )
    res = run_domains(cfg, tmp_path / "out", progress=False)
    assert len(res.domains) == 4
    assert sum(d.startswith("python_code_") for d in res.domains) == 2
    assert sum(d.startswith("docstrings_") for d in res.domains) == 2
    routing = json.loads((tmp_path / "out" / "routing.json").read_text())
    assert set(routing["labels"].values()) == {"python_code", "docstrings"}
    assert set(routing["models"]) == {"python_code", "docstrings"}  # no unlabelled model
    for slug in routing["labels"].values():
        assert ClusterModel.load(tmp_path / "out" / "clusters" / "by_label" / slug).n_domains == 2
    a = pq.read_table(tmp_path / "out" / "assignments").to_pydict()
    assert all(d.startswith(lab + "_") for d, lab in zip(a["domain"], a["label"]))
    # new documents are placed by their label's own model, exactly as the stage placed them
    assigner = DomainAssigner(tmp_path / "out")
    texts = [_first_texts(tmp_path / "out", d, 10) for d in res.domains]
    for d, t in zip(res.domains, texts):
        label = "python_code" if d.startswith("python_code_") else "docstrings"
        assert assigner.assign(t, [label] * len(t)) == [d] * len(t)


@pytest.mark.slow
def test_label_plus_cluster_clusters_only_unlabelled_sources(demo_corpus, tmp_path, small_cfg, subset_writer):
    write_subset = subset_writer
    labelled = write_subset(
        demo_corpus, tmp_path / "lab.parquet", per_domain=40, domains=["emails", "licenses"]
    )
    unlabelled = write_subset(
        demo_corpus, tmp_path / "web.parquet", per_domain=100, domains=["c_headers", "reference_manual"]
    )
    cfg = small_cfg(
        sources=[
            SourceConfig(path=str(labelled), label_column="source", id_column="id"),
            SourceConfig(path=str(unlabelled), id_column="id"),
        ],
        mode="label+cluster",
        cluster=_cluster_cfg(2, n_fine=12),
    )
    res = run_domains(cfg, tmp_path / "out", progress=False)
    clustered = [d for d in res.domains if d not in ("emails", "licenses")]
    assert {"emails", "licenses"} < set(res.domains) and len(clustered) == 2
    assert ClusterModel.load(tmp_path / "out" / "clusters").domain_names == clustered or set(
        clustered
    ) <= set(ClusterModel.load(tmp_path / "out" / "clusters").domain_names)
    a = pq.read_table(tmp_path / "out" / "assignments").to_pydict()
    truth = dict(zip(*pq.read_table(unlabelled, columns=["id", "source"]).to_pydict().values()))
    for i, d, lab in zip(a["id"], a["domain"], a["label"]):
        if d in clustered:
            assert lab is None and i in truth
        else:
            assert lab == d
    assigner = DomainAssigner(tmp_path / "out")
    for d in res.domains:
        t = _first_texts(tmp_path / "out", d, 10)
        want = [d] * len(t)
        if d in clustered:
            assert assigner.assign(t) == want  # unlabelled: the model decides
        else:
            assert assigner.assign(t, [d] * len(t)) == want  # labelled: the label decides
    assert assigner.assign(["anything"], ["never-seen-label"]) == [None]
    # the two hidden domains of the unlabelled source land in different clusters
    by_dom: dict[str, Counter] = {}
    for i, d in zip(a["id"], a["domain"]):
        if d in clustered:
            by_dom.setdefault(d, Counter())[truth[i]] += 1
    purity = sum(c.most_common(1)[0][1] for c in by_dom.values()) / sum(
        sum(c.values()) for c in by_dom.values()
    )
    assert purity > 0.7, by_dom  # chance: 0.5


def test_fewer_docs_than_clusters_is_a_clear_error(tmp_path, small_cfg):
    rows = {"text": [f"a short document number {i} about topic {i % 3}" for i in range(6)]}
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    cfg = small_cfg(
        sources=[SourceConfig(path=str(tmp_path / "x.parquet"))], mode="cluster", cluster=_cluster_cfg(8)
    )
    with pytest.raises(MoemixError, match=r"6 documents, fewer than the 8 clusters.*cluster.n_domains=8"):
        run_domains(cfg, tmp_path / "out", progress=False)


def test_an_executor_that_loses_units_is_caught(demo_subset, tmp_path, small_cfg):
    def lossy_executor(fn, units, *, what=""):
        return run_in_process(fn, units[:-1], what=what)

    cfg = small_cfg(
        sources=[SourceConfig(path=str(demo_subset), id_column="id")],
        mode="cluster",
        cluster=_cluster_cfg(3, n_fine=8),
    )
    with pytest.raises(MoemixError, match=r"domains \(read\): 0 of 1 work units came back"):
        run_domains(cfg, tmp_path / "out", executor=lossy_executor, progress=False)
