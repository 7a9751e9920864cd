from __future__ import annotations

import pytest
import yaml

from moemix._io import to_jsonable
from moemix.configtools import from_dict
from moemix.domains.config import DomainsConfig
from moemix.errors import MoemixError

YAML = """
sources:
  - path: data/web/*.jsonl.zst
    id_column: url
    sample_fraction: 0.5
  - path: data/code/
    text_column: content
    label_column: lang
  - hub: someone/corpus
    split: train
    label: books
mode: label+cluster
split_labels: 3
cluster:
  n_domains: 4
  n_fine_clusters: 16
  sample_size: 1000
tokenizer:
  vocab_size: 8192
valid_fraction: 0.02
max_docs_per_domain: 100000
"""


def test_yaml_maps_onto_the_config():
    cfg = from_dict(DomainsConfig, yaml.safe_load(YAML), where="domains")
    assert [s.path or s.hub for s in cfg.sources] == ["data/web/*.jsonl.zst", "data/code/", "someone/corpus"]
    assert cfg.sources[1].label_column == "lang" and cfg.sources[2].label == "books"
    assert cfg.cluster.n_domains == 4 and cfg.tokenizer.vocab_size == 8192 and cfg.split_labels == 3
    again = from_dict(DomainsConfig, to_jsonable(cfg), where="domains")
    assert again == cfg


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"valid_fraction": 0.7}, "valid_fraction"),
        ({"mode": "topics"}, "mode"),
        ({"split_labels": 1}, "split_labels"),
        ({"min_docs_per_domain": 1}, "min_docs_per_domain"),
        ({"sources": [{"path": "x", "hub": "y"}]}, "exactly one of 'path' or 'hub'"),
        ({"sources": [{"path": "x", "sample_fraction": 0}]}, "sample_fraction"),
        ({"sources": [{"path": "x", "format": "xml"}]}, "format"),
        ({"tokenizer": {"vocab_size": 100}}, "vocab_size"),
        ({"sources": [{"path": "x", "txt_column": "body"}]}, "unknown key 'txt_column'"),
    ],
)
def test_bad_values_are_one_line_errors(patch, match):
    with pytest.raises(MoemixError, match=match):
        from_dict(DomainsConfig, patch, where="domains")


def test_label_plus_cluster_with_only_labelled_sources_must_split(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text('{"text": "x"}\n')
    spec = {"sources": [{"path": str(data), "label": "code"}], "mode": "label+cluster"}
    with pytest.raises(MoemixError, match="set split_labels >= 2"):
        from_dict(DomainsConfig, spec, where="domains")
    assert from_dict(DomainsConfig, {**spec, "split_labels": 2}).split_labels == 2
