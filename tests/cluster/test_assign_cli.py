"""``moemix assign``: new parquet/jsonl documents routed to a saved domains stage's clusters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moemix.cli import main
from moemix.domains.cluster import ClusterConfig, fit_cluster_model

sys.path.insert(0, str(Path(__file__).parent))
from corpus import labelled_corpus  # noqa: E402


def test_assign_cli_parquet_and_jsonl(tmp_path, capsys):
    texts = list(labelled_corpus(60)[0])
    model = fit_cluster_model(texts, ClusterConfig(n_domains=4, n_fine_clusters=16), seed=0)
    stage = tmp_path / "domains" / "abc"
    model.save(stage / "clusters")
    pq.write_table(pa.table({"body": texts[:50], "n": list(range(50))}), tmp_path / "a.parquet")
    with open(tmp_path / "b.jsonl", "w") as f:
        for t in texts[50:80]:
            f.write(json.dumps({"body": t}) + "\n")
    rc = main(
        [
            "assign",
            str(stage),
            str(tmp_path / "a.parquet"),
            str(tmp_path / "b.jsonl"),
            "--out",
            str(tmp_path / "out"),
            "--text-column",
            "body",
            "--quiet",
        ]
    )
    assert rc == 0
    a = pq.read_table(tmp_path / "out" / "a.parquet")
    b = pq.read_table(tmp_path / "out" / "b.parquet")
    assert a.column("n").to_pylist() == list(range(50))
    want = model.assign(texts[:80]).tolist()
    got_ids = a.column("domain_id").to_pylist() + b.column("domain_id").to_pylist()
    assert got_ids == want
    got_names = a.column("domain").to_pylist() + b.column("domain").to_pylist()
    assert got_names == [model.domain_names[i] for i in want]


def test_assign_cli_errors_are_one_line(tmp_path, capsys):
    rc = main(["assign", str(tmp_path), str(tmp_path / "x.parquet"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moemix: error:") and "no cluster model" in err and "\n" not in err
