"""Every evaluation corpus config under benchmarks/corpora loads against today's config schema.

The corpora themselves are built from Debian packages and are not in the repository, so each config is
loaded from a copy whose source files are empty stand-ins at the same relative paths: a renamed or
retired config key (or a preset the configs name) fails here, not twenty minutes into a benchmark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from moemix.pipeline.config import load_config

CORPORA = Path(__file__).resolve().parents[2] / "benchmarks" / "corpora"
CONFIGS = sorted(CORPORA.glob("*.yaml"))


def test_there_are_corpus_configs() -> None:
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_corpus_config_loads(config: Path, tmp_path: Path) -> None:
    here = tmp_path / "benchmarks" / "corpora"
    here.mkdir(parents=True)
    copy = here / config.name
    shutil.copy(config, copy)
    sources = yaml.safe_load(config.read_text())["domains"]["sources"]
    for src in sources:
        stand_in = (here / src["path"]).resolve()
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.touch()
    cfg = load_config(copy)
    assert [Path(s.path).name for s in cfg.domains.sources] == [Path(s["path"]).name for s in sources]
    labels = [s.get("label") for s in sources]
    if cfg.domains.mode == "label":
        # one domain per source: a label each, none repeated (a repeat would merge two sources)
        assert all(labels) and len(set(labels)) == len(labels)
    else:
        assert cfg.domains.cluster.n_domains >= 2
