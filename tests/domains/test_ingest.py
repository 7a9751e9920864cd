from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from moemix.domains.ingest import (
    IngestStats,
    SourceConfig,
    content_hashes,
    ingest,
    is_valid,
    source_name,
)
from moemix.errors import MoemixError

TEXTS = [f"document number {i} about {'cats' if i % 2 else 'dogs'} and other things" for i in range(50)]


def collect(sources, valid_fraction=0.2, label_column=None, stats=None, batch_size=7):
    return [d for b in ingest(sources, valid_fraction, label_column, batch_size, stats) for d in b]


def write_all_formats(tmp_path):
    rows = [{"text": t, "id": f"r{i}", "lab": "even" if i % 2 == 0 else "odd"} for i, t in enumerate(TEXTS)]
    table = pa.Table.from_pylist(rows)
    paths = {}
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(table, paths["parquet"], row_group_size=16)
    paths["arrow_file"] = tmp_path / "d.arrow"
    feather.write_feather(table, paths["arrow_file"], compression="uncompressed")
    paths["arrow_stream"] = tmp_path / "s.arrow"
    with ipc.new_stream(paths["arrow_stream"], table.schema) as w:
        for b in table.to_batches(max_chunksize=10):
            w.write_batch(b)
    paths["csv"] = tmp_path / "d.csv"
    pcsv.write_csv(table, paths["csv"])
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    paths["jsonl"] = tmp_path / "d.jsonl"
    paths["jsonl"].write_bytes(lines)
    paths["jsonl_gz"] = tmp_path / "d.jsonl.gz"
    paths["jsonl_gz"].write_bytes(gzip.compress(lines))
    zstd = pytest.importorskip("zstandard")
    paths["jsonl_zst"] = tmp_path / "d.jsonl.zst"
    paths["jsonl_zst"].write_bytes(zstd.ZstdCompressor().compress(lines))
    return paths


def test_every_format_yields_the_same_records(tmp_path):
    paths = write_all_formats(tmp_path)
    for kind, path in paths.items():
        docs = collect([SourceConfig(path=str(path), id_column="id", label_column="lab")])
        assert [d.text for d in docs] == TEXTS, kind
        assert [d.id for d in docs] == [f"r{i}" for i in range(50)], kind
        assert [d.label for d in docs] == ["even" if i % 2 == 0 else "odd" for i in range(50)], kind
        assert {d.source for d in docs} == {path.name.split(".")[0]}, kind


def test_text_format_one_doc_per_line_and_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(TEXTS[:10]) + "\n")
    docs = collect([SourceConfig(path=str(tmp_path / "a.txt"))])
    assert [d.text for d in docs] == TEXTS[:10]
    assert [d.id for d in docs] == [f"a:{i}" for i in range(10)]  # stable row ids
    assert {d.label for d in docs} == {None}  # an unlabelled source
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"f{i}.txt").write_text(f"line one {i}\nline two {i}\n")
    docs = collect([SourceConfig(path=str(tmp_path / "docs"), text_unit="file", label="notes")])
    assert [d.text for d in docs] == [f"line one {i}\nline two {i}\n" for i in range(3)]
    assert {d.label for d in docs} == {"notes"}


def test_glob_and_folder_sources_are_sorted(tmp_path):
    for i in (2, 0, 1):
        (tmp_path / f"p{i}.jsonl").write_text(json.dumps({"text": f"text of file {i}"}) + "\n")
    docs = collect([SourceConfig(path=str(tmp_path / "p*.jsonl"))])
    assert [d.text for d in docs] == [f"text of file {i}" for i in range(3)]
    assert source_name(SourceConfig(path=str(tmp_path / "p*.jsonl"))) == tmp_path.name
    docs2 = collect([SourceConfig(path=str(tmp_path))])
    assert [d.text for d in docs2] == [d.text for d in docs]


def test_exact_duplicates_are_removed_and_counted(tmp_path, small_cfg):
    from moemix.domains.stage import run_domains

    texts = TEXTS[:20] + [TEXTS[3], "  " + TEXTS[4] + "\n", TEXTS[5].replace(" ", "   ")] + TEXTS[:2]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[15:25]))
    cfg = small_cfg(
        # one domain for both sources, so no small domain is dropped
        sources=[SourceConfig(path=str(tmp_path / f"{n}.jsonl"), label="all") for n in ("a", "b")],
        mode="label",
        label_column=None,
        min_docs_per_domain=2,
        partitions=3,
    )
    out = tmp_path / "out"
    run_domains(cfg, out, progress=False)
    stats = json.loads((out / "stats.json").read_text())
    kept = pq.read_table(out / "assignments").to_pydict()
    # first occurrence in corpus order wins, across sources too: b keeps only TEXTS[20:25]
    assert sorted(kept["id"]) == sorted([f"a:{i}" for i in range(20)] + [f"b:{i}" for i in range(5, 10)])
    assert stats["duplicates_removed"] == 5 + 5
    per = {s["name"]: s for s in stats["sources"]}
    assert per["a"]["duplicates"] == 5 and per["b"]["duplicates"] == 5


def test_split_is_a_function_of_content(tmp_path):
    texts = [f"unique text {i} " * 3 for i in range(4000)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    docs = collect([SourceConfig(path=str(tmp_path / "a.jsonl"))], valid_fraction=0.1)
    frac = np.mean([d.split == "valid" for d in docs])
    assert 0.08 < frac < 0.12
    for d in docs[:100]:
        assert d.split == ("valid" if is_valid(content_hashes(d.text)[1], 0.1) else "train")
    # a reordered corpus gets the same split per document
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(texts)))
    rev = {
        d.text: d.split for d in collect([SourceConfig(path=str(tmp_path / "b.jsonl"))], valid_fraction=0.1)
    }
    assert all(rev[d.text] == d.split for d in docs)


def test_sample_fraction_is_deterministic(tmp_path):
    texts = [f"sampled text {i}" for i in range(2000)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    src = SourceConfig(path=str(tmp_path / "a.jsonl"), sample_fraction=0.25)
    a, b = collect([src]), collect([src])
    assert [d.id for d in a] == [d.id for d in b]
    assert 400 < len(a) < 600


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(MoemixError, match="nope.parquet"):
        collect([SourceConfig(path=str(tmp_path / "nope.parquet"))])
    with pytest.raises(MoemixError, match="matches no files"):
        collect([SourceConfig(path=str(tmp_path / "*.jsonl"))])


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl", "arrow_file"])
def test_missing_columns_name_file_and_column(tmp_path, kind):
    path = write_all_formats(tmp_path)[kind]
    with pytest.raises(MoemixError, match=rf"{path.name}.*missing text column 'body'"):
        collect([SourceConfig(path=str(path), text_column="body")])
    with pytest.raises(MoemixError, match=rf"{path.name}.*missing label column 'topic'"):
        collect([SourceConfig(path=str(path), label_column="topic")])
    with pytest.raises(MoemixError, match=rf"{path.name}.*missing id column 'uid'"):
        collect([SourceConfig(path=str(path), id_column="uid")])


def test_empty_source_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MoemixError, match="empty.jsonl.*empty"):
        collect([SourceConfig(path=str(tmp_path / "empty.jsonl"))])
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    with pytest.raises(MoemixError, match="blank.txt.*no.*usable text"):
        collect([SourceConfig(path=str(tmp_path / "blank.txt"))])
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(MoemixError, match="e.parquet.*empty"):
        collect([SourceConfig(path=str(tmp_path / "e.parquet"))])


def test_invalid_utf8_and_empty_docs_are_counted_skips(tmp_path):
    raw = b"good line one\n\xff\xfe broken bytes\n\n   \ngood line two\n\xc3\x28 bad\n"
    (tmp_path / "t.txt").write_bytes(raw)
    stats = IngestStats()
    docs = collect([SourceConfig(path=str(tmp_path / "t.txt"))], stats=stats)
    assert [d.text for d in docs] == ["good line one", "good line two"]
    assert stats.skipped["invalid_utf8"] == 2
    assert stats.skipped["empty"] == 2
    assert stats.per_source["t"]["skipped"] == 4
    # jsonl: broken bytes, bad json, empty text, missing text are all counted
    (tmp_path / "j.jsonl").write_bytes(
        b'{"text": "fine doc"}\n{"text": "\xff\xff"}\nnot '
        b'json\n{"text": "  "}\n{"text": null}\n{"other": 1}\n'
    )
    stats = IngestStats()
    docs = collect([SourceConfig(path=str(tmp_path / "j.jsonl"))], stats=stats)
    assert [d.text for d in docs] == ["fine doc"]
    assert stats.skipped["invalid_utf8"] == 1 and stats.skipped["bad_json"] == 1
    assert stats.skipped["empty"] == 1 and stats.skipped["missing_text"] == 2
    # csv with an invalid UTF-8 cell
    (tmp_path / "c.csv").write_bytes(b"text,id\nhello there,1\n\xff\xfe oops,2\n,3\nbye now,4\n")
    stats = IngestStats()
    docs = collect([SourceConfig(path=str(tmp_path / "c.csv"), id_column="id")], stats=stats)
    assert [(d.id, d.text) for d in docs] == [("1", "hello there"), ("4", "bye now")]
    assert stats.skipped["invalid_utf8"] == 1 and stats.skipped["empty"] == 1


def test_missing_label_values_are_counted(tmp_path):
    pq.write_table(
        pa.table({"text": ["a doc", "b doc", "c doc"], "lab": ["x", None, " "]}), tmp_path / "l.parquet"
    )
    stats = IngestStats()
    docs = collect([SourceConfig(path=str(tmp_path / "l.parquet"), label_column="lab")], stats=stats)
    assert [d.label for d in docs] == ["x"] and stats.skipped["missing_label"] == 2


def test_unknown_extension_asks_for_a_format(tmp_path):
    (tmp_path / "data.xyz").write_text("hello")
    with pytest.raises(MoemixError, match="data.xyz.*format"):
        collect([SourceConfig(path=str(tmp_path / "data.xyz"))])
    docs = collect([SourceConfig(path=str(tmp_path / "data.xyz"), format="text")])
    assert [d.text for d in docs] == ["hello"]


def test_hub_dataset_while_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(
        MoemixError, match="cannot reach the Hugging Face hub for dataset someone/corpus: offline"
    ):
        collect([SourceConfig(hub="someone/corpus")])
    assert time.time() - t < 5


def test_hub_dataset_without_network_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    t = time.time()
    with pytest.raises(MoemixError, match="cannot reach the Hugging Face hub"):
        collect([SourceConfig(hub="someone/corpus")])
    assert time.time() - t < 10


def test_source_needs_exactly_one_of_path_or_hub():
    with pytest.raises(ValueError):
        SourceConfig().validate()
    with pytest.raises(ValueError):
        SourceConfig(path="x", hub="y").validate()


def test_dataset_saved_with_save_to_disk_reads_as_a_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": TEXTS[:12], "lab": ["x"] * 12}).save_to_disk(str(tmp_path / "ds"))
    docs = collect([SourceConfig(path=str(tmp_path / "ds"), label_column="lab")])
    assert [d.text for d in docs] == TEXTS[:12] and {d.label for d in docs} == {"x"}


def test_json_array_file_gets_a_clear_error(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}], indent=1))
    with pytest.raises(MoemixError, match="a.json holds a JSON array"):
        collect([SourceConfig(path=str(tmp_path / "a.json"))])


def test_corrupt_files_name_the_file(tmp_path):
    lines = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS).encode()
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(lines)[:-40])
    with pytest.raises(MoemixError, match="cut.jsonl.gz"):
        collect([SourceConfig(path=str(tmp_path / "cut.jsonl.gz"))])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(MoemixError, match="bad.parquet"):
        collect([SourceConfig(path=str(tmp_path / "bad.parquet"))])
