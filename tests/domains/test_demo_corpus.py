from __future__ import annotations

import email
import json
import textwrap

import pyarrow.parquet as pq

from moemix.pipeline.demo_corpus import build_demo_corpus, chunk_blocks, corpus_key, emails, reference_manual


def test_demo_corpus_is_big_real_and_multi_domain(demo_corpus):
    assert len(demo_corpus.domains) >= 4
    assert demo_corpus.total_bytes >= 20_000_000
    assert sum(demo_corpus.bytes.values()) == demo_corpus.total_bytes
    for d in demo_corpus.domains:
        t = pq.read_table(demo_corpus.files[d])
        assert t.column_names == ["text", "source", "id"]
        assert t.num_rows == demo_corpus.docs[d] > 20
        assert set(t.column("source").to_pylist()) == {d}
        ids = t.column("id").to_pylist()
        assert len(set(ids)) == len(ids)
        lengths = [len(x) for x in t.column("text").to_pylist()]
        assert max(lengths) <= 4000


def test_domains_contain_what_they_claim(demo_corpus):
    def texts(d, n=200):
        return pq.read_table(demo_corpus.files[d]).column("text").to_pylist()[:n]

    code = texts("python_code")
    compiled = 0
    for t in code:
        try:
            compile(textwrap.dedent(t), "<doc>", "exec")
            compiled += 1
        except SyntaxError:
            pass
    assert compiled / len(code) > 0.6  # chunks are cut at definitions, so most are valid Python
    assert sum("def " in t or "class " in t or "import " in t for t in code) / len(code) > 0.6
    if "emails" in demo_corpus.domains:
        msgs = [email.message_from_string(t) for t in texts("emails")]
        assert sum(bool(m.get("From") or m.get("To") or m.get("Subject")) for m in msgs) / len(msgs) > 0.8
    if "c_headers" in demo_corpus.domains:
        h = texts("c_headers")
        assert sum(("#" in t) or (";" in t) for t in h) / len(h) > 0.9
    if "docstrings" in demo_corpus.domains:
        prose = texts("docstrings")
        assert sum(t.count(" the ") for t in prose) > len(prose)  # English prose, not code
        assert sum("def " in t for t in prose) / len(prose) < 0.3


def test_build_is_cached(demo_corpus):
    again = build_demo_corpus(demo_corpus.root.parent)  # cached: returns the same directory
    assert again.root == demo_corpus.root
    assert demo_corpus.root.name == corpus_key()
    assert json.loads((demo_corpus.root / "stats.json").read_text())["total_bytes"] == demo_corpus.total_bytes
    # no temp dirs are left behind next to the published one
    assert [p.name for p in demo_corpus.root.parent.iterdir() if p.name.startswith(".")] == []


def test_collectors_are_deterministic_and_match_the_cache(demo_corpus):
    # a full rebuild costs ~10-20 s; re-running the small collectors checks the same property
    for name, collect in (("reference_manual", reference_manual), ("emails", emails)):
        if name not in demo_corpus.domains:
            continue
        first, second = list(collect()), list(collect())
        assert first == second
        stored = pq.read_table(demo_corpus.files[name]).to_pydict()
        gen = dict(first)
        # the cache holds them in order, minus the few exact repeats of an earlier domain's text
        assert [i for i, _ in first if i in set(stored["id"])] == stored["id"]
        assert [gen[i] for i in stored["id"]] == stored["text"]
        assert len(first) - len(stored["id"]) <= 5


def test_chunking_respects_limits():
    blocks = ["a" * 500 + "\n"] * 20 + ["x" * 9000]
    docs = list(chunk_blocks(blocks, target=1200, limit=2000))
    assert "".join(docs) == "".join(blocks)  # nothing lost or reordered
    assert all(len(d) <= 2000 for d in docs)


def test_source_config_reads_every_domain_with_its_label(demo_corpus):
    from collections import Counter

    from moemix.domains.ingest import IngestStats, ingest

    stats = IngestStats()
    labels: Counter[str] = Counter()
    for batch in ingest([demo_corpus.source_config()], 0.05, None, 4096, stats):
        labels.update(d.label for d in batch)
    assert sorted(labels) == demo_corpus.domains
    assert stats.docs_read == sum(demo_corpus.docs.values())
    assert sum(labels.values()) == stats.docs_read - stats.duplicates
    assert stats.duplicates < 0.01 * stats.docs_read  # whitespace-only variants, nothing systematic


def test_own_readme_is_not_demo_text():
    """moemix's METADATA body is this repo's README at install time: with it, the corpus (and every
    demo result) would depend on when the environment was created."""
    import importlib.metadata

    from moemix.pipeline.demo_corpus import _dists, package_readmes

    assert importlib.metadata.distribution("moemix")  # installed, so the filter is what keeps it out
    names = {d.metadata["Name"].lower() for d in _dists()}
    assert "moemix" not in names and len(names) > 10
    assert not any(doc_id.startswith("package_readmes/moemix#") for doc_id, _ in package_readmes())
