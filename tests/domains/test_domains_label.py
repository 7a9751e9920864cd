from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from moemix.domains import stage
from moemix.domains.config import DomainsConfig
from moemix.domains.ingest import SourceConfig
from moemix.domains.routing import DomainAssigner, slugify
from moemix.domains.stage import run_domains
from moemix.domains.units import run_in_process
from moemix.errors import MoemixError
from moemix.token_shards import DomainTokens


def _texts(out, split, domain):
    files = sorted((out / "text" / split / domain).glob("part-*.parquet"))
    return [t for f in files for t in pq.read_table(f).column("text").to_pylist()]


@pytest.fixture(scope="module")
def label_run(demo_subset, tmp_path_factory, small_cfg):
    """Label mode over the demo subset plus a second source that repeats some of its documents."""
    tmp = tmp_path_factory.mktemp("label")
    t = pq.read_table(demo_subset)
    dup = t.slice(0, 25)  # exact copies of 25 docs already in the subset
    pq.write_table(dup, tmp / "dups.parquet")
    cfg = small_cfg(
        sources=[
            SourceConfig(path=str(demo_subset), label_column="source", id_column="id"),
            SourceConfig(path=str(tmp / "dups.parquet"), label_column="source", id_column="id"),
        ],
        partitions=3,  # several parts per domain
    )
    out = tmp / "run"
    res = run_domains(cfg, out, seed=0, progress=False)
    return cfg, out, res, t


@pytest.mark.slow
def test_label_mode_end_to_end(label_run):
    cfg, out, res, table = label_run
    labels = sorted(set(table.column("source").to_pylist()))
    assert res.domains == labels  # demo labels are already slugs
    assert not (out / "manifest.json").exists()
    stats = json.loads(res.stats_path.read_text())
    assert stats["duplicates_removed"] >= 25
    assert stats["docs_kept"] == table.num_rows - (stats["duplicates_removed"] - 25)
    data = DomainTokens(out / "tokens")
    assert data.domains == res.domains
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == data.vocab_size == 400
    assert tok.token_to_id("<|endoftext|>") == data.eos_id
    by_name = {d["name"]: d for d in stats["domains"]}
    for d in res.domains:
        for split in ("train", "valid"):
            texts = _texts(out, split, d)
            assert texts, (split, d)
            ids = data.tokens(split, d)
            # the shard is exactly the re-tokenized texts, EOS after each document
            want = []
            for text in texts:
                want += tok.encode(text, add_special_tokens=False).ids + [data.eos_id]
            assert np.array_equal(np.asarray(ids), np.asarray(want, dtype=ids.dtype)), (split, d)
            assert data.n_tokens(split, d) == len(want) == res.tokens[split][d]
            assert data.n_bytes(split, d) == sum(len(t.encode()) for t in texts)
            assert data.meta.docs[split][d] == len(texts)
            assert by_name[d]["tokens"][split] == len(want)
        assert by_name[d]["top_terms"] and by_name[d]["examples"]
        # valid and train never share a text
        assert not set(_texts(out, "train", d)) & set(_texts(out, "valid", d))
        assert len(list((out / "text" / "train" / d).glob("part-*.parquet"))) >= 1


@pytest.mark.slow
def test_assignments_cover_every_kept_doc(label_run):
    cfg, out, res, table = label_run
    a = pq.read_table(out / "assignments").to_pydict()
    stats = json.loads(res.stats_path.read_text())
    assert len(a["id"]) == stats["docs_kept"] == len(set(a["id"]))
    truth = dict(zip(table.column("id").to_pylist(), table.column("source").to_pylist()))
    assert all(truth[i] == dom == lab for i, dom, lab in zip(a["id"], a["domain"], a["label"]))
    for d in res.domains:
        for split in ("train", "valid"):
            n = sum(1 for dom, s in zip(a["domain"], a["split"]) if dom == d and s == split)
            assert n == len(_texts(out, split, d))


@pytest.mark.slow
def test_same_input_and_seed_give_identical_bytes(label_run, tmp_path):
    cfg, out, res, _ = label_run
    out2 = tmp_path / "again"
    run_domains(cfg, out2, seed=0, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    for f in files:
        assert (out / f).read_bytes() == (out2 / f).read_bytes(), f


def test_slugs_are_unique_and_safe(tmp_path, small_cfg):
    assert slugify("Web Text (EN)") == "web_text_en"
    assert slugify("***") == "domain"
    rows = {
        "text": [f"text number {i} " * 4 for i in range(60)],
        "cat": ["Web Text"] * 20 + ["web-text"] * 20 + ["Ünïcode Book"] * 20,
    }
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    res = run_domains(
        small_cfg(
            sources=[SourceConfig(path=str(tmp_path / "x.parquet"), label_column="cat")], valid_fraction=0.2
        ),
        tmp_path / "out",
        progress=False,
    )
    assert res.domains == ["n_code_book", "web_text", "web_text_2"]
    stats = json.loads(res.stats_path.read_text())
    assert {d["name"]: d["label"] for d in stats["domains"]}["web_text_2"] == "web-text"
    assert DomainAssigner(tmp_path / "out").assign(["a", "b"], ["web-text", "Web Text"]) == [
        "web_text_2",
        "web_text",
    ]


def test_one_file_per_domain_without_label_column(tmp_path, small_cfg):
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name} line {i} with words\n" for i in range(40)))
    cfg = small_cfg(
        sources=[
            SourceConfig(path=str(tmp_path / "alpha.txt")),
            SourceConfig(path=str(tmp_path / "beta.txt")),
        ]
    )
    res = run_domains(cfg, tmp_path / "out", progress=False)
    assert res.domains == ["alpha", "beta"]
    assert all(res.tokens["valid"][d] > 0 for d in res.domains)


def test_small_domains_are_dropped_with_a_count_or_raise(tmp_path, small_cfg):
    rows = {
        "text": [f"big domain text {i}" for i in range(60)] + ["tiny one", "tiny two"],
        "lab": ["big"] * 60 + ["tiny"] * 2,
    }
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    src = [SourceConfig(path=str(tmp_path / "x.parquet"), label_column="lab")]
    with pytest.warns(UserWarning, match="tiny"):
        res = run_domains(small_cfg(sources=src), tmp_path / "out", progress=False)
    assert res.domains == ["big"]
    stats = json.loads(res.stats_path.read_text())
    assigner = DomainAssigner(tmp_path / "out")
    assert assigner.assign(["x", "y", "z"], ["big", "tiny", "other"]) == ["big", None, None]
    assert "tiny" in stats["dropped_domains"] and stats["skipped"]["in_dropped_domain"] == 2
    assert not (tmp_path / "out" / "text" / "train" / "tiny").exists()
    with pytest.raises(MoemixError, match="domain 'tiny'"):
        run_domains(small_cfg(sources=src, small_domains="error"), tmp_path / "out2", progress=False)


def test_every_domain_gets_a_valid_doc_once_big_enough(tmp_path, small_cfg):
    # 40 docs at valid_fraction 0.05: hashing alone leaves ~13% of such domains without validation data
    rows = {
        "text": [f"doc {i} of label {j}" for j in range(8) for i in range(40)],
        "lab": [f"l{j}" for j in range(8) for _ in range(40)],
    }
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    res = run_domains(
        small_cfg(
            sources=[SourceConfig(path=str(tmp_path / "x.parquet"), label_column="lab")], valid_fraction=0.05
        ),
        tmp_path / "out",
        progress=False,
    )
    assert len(res.domains) == 8 and all(res.tokens["valid"][d] > 0 for d in res.domains)


def test_max_docs_per_domain_caps_and_counts(tmp_path, small_cfg):
    rows = {"text": [f"text {i} " * 3 for i in range(100)], "lab": ["a"] * 100}
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    res = run_domains(
        small_cfg(
            sources=[SourceConfig(path=str(tmp_path / "x.parquet"), label_column="lab")],
            max_docs_per_domain=30,
        ),
        tmp_path / "out",
        progress=False,
    )
    stats = json.loads(res.stats_path.read_text())
    assert sum(stats["domains"][0]["docs"].values()) == 30
    assert stats["skipped"]["over_max_docs_per_domain"] == 70


def test_too_many_distinct_labels_is_an_error(tmp_path, small_cfg):
    rows = {"text": [f"text {i}" for i in range(50)], "lab": [str(i) for i in range(50)]}
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    with pytest.raises(MoemixError, match="label column 'lab'.*max_domains=10"):
        run_domains(
            small_cfg(
                sources=[SourceConfig(path=str(tmp_path / "x.parquet"))], label_column="lab", max_domains=10
            ),
            tmp_path / "out",
            progress=False,
        )


def test_given_tokenizer_is_used(label_run, tmp_path):
    _, out, _, _ = label_run
    (tmp_path / "a.txt").write_text("".join(f"alpha line {i}\n" for i in range(30)))
    cfg = DomainsConfig(sources=[SourceConfig(path=str(tmp_path / "a.txt"))], min_docs_per_domain=5)
    cfg.tokenizer.path = str(out / "tokenizer.json")
    res = run_domains(cfg, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    assert res.domains == ["a"]
    cfg.tokenizer.path = str(tmp_path / "missing.json")
    with pytest.raises(MoemixError, match="missing.json"):
        run_domains(cfg, tmp_path / "out3", progress=False)


@pytest.mark.slow
def test_label_mode_routes_in_the_dedup_step_and_writes_what_separate_steps_write(
    label_run, tmp_path, monkeypatch
):
    from dataclasses import replace

    cfg = replace(label_run[0], max_docs_per_domain=30)  # the route step's tallies decide the caps
    steps: list[str] = []

    def recording(fn, units, *, what):
        steps.append(what)
        return run_in_process(fn, units, what=what)

    run_domains(cfg, tmp_path / "fused", seed=0, executor=recording, progress=False)
    assert steps == ["read", "dedup+route", "write"]
    steps.clear()
    monkeypatch.setattr(stage, "routes_with_dedup", lambda cfg: False)
    run_domains(cfg, tmp_path / "apart", seed=0, executor=recording, progress=False)
    assert steps == ["read", "dedup", "route", "write"]

    def tree(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    fused, apart = tree(tmp_path / "fused"), tree(tmp_path / "apart")
    assert json.loads(fused["stats.json"])["skipped"]["over_max_docs_per_domain"] > 0
    assert fused == apart
