"""The domains stage's config and result (``domains:`` in a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from moemix.config_fields import execution_only
from moemix.domains.cluster import ClusterConfig
from moemix.domains.ingest import SourceConfig
from moemix.domains.tokenizer import TokenizerConfig

Mode = Literal["label", "cluster", "label+cluster"]


@dataclass
class NearDedupConfig:
    """MinHash LSH near-duplicate removal (off by default): of documents whose word-shingle sets are
    about ``threshold`` Jaccard-similar, only the first in input order is kept."""

    enabled: bool = False
    threshold: float = 0.8
    num_perm: int = 128
    # words per shingle
    ngram: int = 5

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"near_dedup.threshold must be in (0, 1), got {self.threshold}")
        if not 16 <= self.num_perm <= 1024:
            raise ValueError(f"near_dedup.num_perm must be in [16, 1024], got {self.num_perm}")
        if self.ngram < 1:
            raise ValueError(f"near_dedup.ngram must be >= 1, got {self.ngram}")


@dataclass
class DomainsConfig:
    # empty = the built-in demo corpus (labelled by its true domain)
    sources: list[SourceConfig] = field(default_factory=list)
    mode: Mode = "label"
    # label column for sources that set neither their own label_column nor a constant label;
    # with none at all, a source's name is its label (one file per domain)
    label_column: str | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    near_dedup: NearDedupConfig = field(default_factory=NearDedupConfig)
    valid_fraction: float = 0.05
    # a domain with more documents keeps a uniform sample (by content hash) of this many
    max_docs_per_domain: int | None = None
    min_docs_per_domain: int = 10
    small_domains: Literal["drop", "error"] = "drop"
    max_domains: int = 256
    # label+cluster: 0 keeps every label one domain (only unlabelled sources are clustered, into
    # cluster.n_domains); k >= 2 also splits each label into k clusters (domains '<label>_<cluster>')
    split_labels: int = 0
    # overrides the run seed when set
    seed: int | None = None
    # Hash partitions: the work units of deduplication, routing and tokenization, and the parts each
    # domain's token shards and text come in. It fixes the outputs (their order), so it is part of the
    # stage key; the number of workers is not. None: one per 128 MiB of input, at least 4.
    partitions: int | None = None
    batch_size: int = 1024
    # where the work units run: "local" (this process), "ray" (Ray Data workers), or "auto": Ray on a
    # cluster (ray.address / RAY_ADDRESS) or for inputs of 256 MiB and more, else this process
    executor: Literal["auto", "ray", "local"] = execution_only("auto")
    # workers of the Ray executor (each takes cpus_per_worker CPUs; None = as many as the cluster has)
    num_workers: int | None = execution_only(None)
    cpus_per_worker: float = execution_only(1.0)
    # cluster modes: GPUs per assignment worker (sentence-transformers embedders on GPUs)
    gpus_per_worker: float = execution_only(0.0)
    # cache directory of the demo corpus (default $MOEMIX_CACHE or ~/.cache/moemix)
    demo_cache_dir: str | None = execution_only(None)

    def validate(self) -> None:
        if not 0.0 < self.valid_fraction < 0.5:
            raise ValueError(f"valid_fraction must be in (0, 0.5), got {self.valid_fraction}")
        if self.max_docs_per_domain is not None and self.max_docs_per_domain < 2:
            raise ValueError("max_docs_per_domain must be >= 2 (one train and one valid document)")
        if self.min_docs_per_domain < 2:
            raise ValueError("min_docs_per_domain must be >= 2 (one train and one valid document)")
        if self.split_labels == 1 or self.split_labels < 0:
            raise ValueError(f"split_labels must be 0 (keep labels whole) or >= 2, got {self.split_labels}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be positive")
        if self.partitions is not None and not 1 <= self.partitions <= 65536:
            raise ValueError(f"partitions must be in [1, 65536], got {self.partitions}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")
        for s in self.sources:
            s.validate()
        self.tokenizer.validate()
        self.near_dedup.validate()
        if self.mode != "label":
            self.cluster.validate()
        if self.mode == "label+cluster" and self.split_labels == 0 and self.sources:
            labelled = [bool(src.label or src.label_column or self.label_column) for src in self.sources]
            if all(labelled):
                # otherwise label+cluster would silently be label mode
                raise ValueError(
                    "mode label+cluster with every source labelled: set split_labels >= 2 to split each "
                    "label into clusters, or add an unlabelled source"
                )


@dataclass
class DomainsResult:
    out_dir: Path
    domains: list[str]
    tokens: dict[str, dict[str, int]]  # split -> domain -> tokens
    stats_path: Path
