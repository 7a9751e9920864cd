"""Stage 1: turn sources into named, tokenized domains with train/valid splits.

Modes
-----
- ``label``: a domain per distinct label value (slugged to ``[a-z0-9_]+``).
- ``cluster``: labels ignored; one cluster model (``moemix.pipeline.cluster``) fitted on a uniform
  sample of the deduplicated corpus assigns every document a domain.
- ``label+cluster``: documents with a label (a label column, or a source's constant ``label``) keep
  it as their domain; documents from unlabelled sources are clustered into ``cluster.n_domains``
  (model in ``clusters/``, so ``moemix assign`` works as in cluster mode). With ``split_labels: k``
  every label is additionally split into k clusters by its own model (fitted on that label's
  documents only, saved under ``clusters/by_label/<label>/``), giving domains ``<label>_<cluster>``:
  per-label models rather than global clusters crossed with labels, so each label really is split
  k ways instead of collapsing into whichever global clusters it happens to hit.
  ``routing.json`` records the label -> domain map and which model names which domains, so
  ``DomainAssigner`` can place new documents exactly as the stage did.

Flow (all streaming, bounded memory): ingest + dedup + split -> text parts (label mode: final
per-domain parts; cluster modes: staging parts, then fit, assign, re-route) -> small-domain
check -> tokenizer (trained on a uniform, hash-chosen sample of training text) -> token shards
-> assignments.parquet -> stats.json.

Small domains: a domain with fewer than ``min_docs_per_domain`` documents, or no train or no
valid document, is dropped with a warning and listed in ``stats.json["dropped_domains"]``
(``small_domains: error`` makes it a MoemixError instead). To keep small but real domains, a
domain whose first ``ceil(1/valid_fraction)`` documents all hashed to train gets that last one
moved to valid; splits stay disjoint because documents are unique after deduplication.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from moemix._io import atomic_path, to_jsonable, write_json_atomic
from moemix.errors import MoemixError
from moemix.pipeline.cluster import ClusterConfig
from moemix.pipeline.ingest import IngestStats, SourceConfig, ingest, unique_name
from moemix.pipeline.tokenizer import (
    BottomKSample,
    TokenizerConfig,
    encode_batch,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)
from moemix.training.shards import SPLITS, TokenShardWriter, TokensMeta, write_meta

log = logging.getLogger(__name__)

Mode = Literal["label", "cluster", "label+cluster"]
AssignFn = Callable[[Path, list[Path], Path], list[Path]]
ROUTING_NAME = "routing.json"

TEXT_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("label", pa.string()), ("text", pa.string())]
)
STAGING_SCHEMA = TEXT_SCHEMA.append(pa.field("split", pa.string()))
ASSIGN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
    ]
)


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
    valid_fraction: float = 0.05
    max_docs_per_domain: int | None = None
    min_docs_per_domain: int = 10
    small_domains: Literal["drop", "error"] = "drop"
    max_domains: int = 256
    # label+cluster: 0 keeps every label one domain (only unlabelled sources are clustered, into
    # cluster.n_domains); k >= 2 also splits each label into k clusters (domains '<label>_<cluster>')
    split_labels: int = 0
    # overrides the run seed when set
    seed: int | None = None
    text_shard_rows: int = 50_000
    batch_size: int = 1024
    # cache directory of the demo corpus (default $MOEMIX_CACHE or ~/.cache/moemix)
    demo_cache_dir: str | None = None

    def validate(self) -> None:
        if not 0.0 < self.valid_fraction < 0.5:
            raise ValueError(f"valid_fraction must be in (0, 0.5), got {self.valid_fraction}")
        if self.max_docs_per_domain is not None and self.max_docs_per_domain < 2:
            raise ValueError("max_docs_per_domain must be >= 2 (one train and one valid document)")
        if self.min_docs_per_domain < 2:
            raise ValueError("min_docs_per_domain must be >= 2 (one train and one valid document)")
        if self.split_labels == 1 or self.split_labels < 0:
            raise ValueError(f"split_labels must be 0 (keep labels whole) or >= 2, got {self.split_labels}")
        if self.text_shard_rows < 1 or self.batch_size < 1:
            raise ValueError("text_shard_rows and batch_size must be positive")
        for s in self.sources:
            s.validate()
        self.tokenizer.validate()
        if self.mode != "label":
            self.cluster.validate()
        if self.mode == "label+cluster" and self.split_labels == 0 and self.sources:
            labelled = [bool(src.label or src.label_column or self.label_column) for src in self.sources]
            if all(labelled):
                # otherwise label+cluster would silently be label mode
                raise ValueError(
                    "mode label+cluster with every source labelled: set split_labels >= 2 to split each "
                    "label "
                    "into clusters, or add an unlabelled source"
                )


@dataclass
class DomainsResult:
    out_dir: Path
    domains: list[str]
    tokens: dict[str, dict[str, int]]  # split -> domain -> tokens
    stats_path: Path


# --------------------------------------------------------------------------- names


def slugify(value: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")
    return s or "domain"


class SlugMap:
    """label value -> unique slug, in order of first appearance (so it is deterministic)."""

    def __init__(self, max_domains: int, what: str):
        self.map: dict[str, str] = {}
        self.used: set[str] = set()
        self.max = max_domains
        self.what = what

    def __call__(self, label: str) -> str:
        slug = self.map.get(label)
        if slug is None:
            if len(self.map) >= self.max:
                raise MoemixError(
                    f"{self.what} has more than max_domains={self.max} distinct values (e.g. "
                    f"{label[:40]!r}); "
                    "is it really a domain label?"
                )
            slug = unique_name(slugify(label), self.used)
            self.map[label] = slug
            self.used.add(slug)
        return slug


# --------------------------------------------------------------------------- parquet parts


class PartRouter:
    """Buffers rows per key and writes them as bounded parquet parts ``<root>/<key...>/part-NNNNN.parquet``.

    Memory: at most ``max_rows`` rows or ``max_part_chars`` of text per key, and
    ``max_buffer_chars`` of text in total (the biggest buffer is flushed when over), so a corpus of
    any size costs the same ~50-100 MB here.
    """

    def __init__(
        self,
        root: Path,
        schema: pa.Schema,
        max_rows: int,
        max_buffer_chars: int = 32 << 20,
        max_part_chars: int = 16 << 20,
    ):
        self.root = root
        self.schema = schema
        self.max_rows = max_rows
        self.max_buffer_chars = max_buffer_chars
        self.max_part_chars = max_part_chars
        self._buf: dict[tuple[str, ...], list[tuple]] = {}
        self._buf_bytes: dict[tuple[str, ...], int] = {}
        self._total = 0
        self._parts: dict[tuple[str, ...], int] = {}
        self.rows: Counter[tuple[str, ...]] = Counter()

    def add(self, key: tuple[str, ...], row: tuple) -> None:
        self._buf.setdefault(key, []).append(row)
        n = len(row[3])
        self._buf_bytes[key] = self._buf_bytes.get(key, 0) + n
        self._total += n
        self.rows[key] += 1
        if len(self._buf[key]) >= self.max_rows or self._buf_bytes[key] >= self.max_part_chars:
            self.flush(key)
        elif self._total > self.max_buffer_chars:
            self.flush(max(self._buf_bytes, key=self._buf_bytes.__getitem__))

    def flush(self, key: tuple[str, ...]) -> None:
        rows = self._buf.pop(key, None)
        self._total -= self._buf_bytes.pop(key, 0)
        if not rows:
            return
        cols = list(zip(*rows))
        table = pa.table({name: list(c) for name, c in zip(self.schema.names, cols)}, schema=self.schema)
        k = self._parts.get(key, 0)
        self._parts[key] = k + 1
        with atomic_path(self.root.joinpath(*key) / f"part-{k:05d}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def close(self) -> None:
        for key in sorted(self._buf):
            self.flush(key)

    def files(self, key: tuple[str, ...]) -> list[Path]:
        return [self.root.joinpath(*key) / f"part-{k:05d}.parquet" for k in range(self._parts.get(key, 0))]


# --------------------------------------------------------------------------- routing into final domains


class DomainRouter:
    """Final placement: caps per domain, the at-least-one-valid rule, text parts, description samples."""

    def __init__(self, out_dir: Path, cfg: DomainsConfig, stats: IngestStats):
        self.parts = PartRouter(out_dir / "text", TEXT_SCHEMA, cfg.text_shard_rows)
        self.cfg = cfg
        self.stats = stats
        self.seen: Counter[str] = Counter()
        self.valid: Counter[str] = Counter()
        self.force_after = math.ceil(1.0 / cfg.valid_fraction)
        # a uniform sample per domain (by hashed id) for top terms and examples, not the first files read
        self.samples: dict[str, BottomKSample] = {}
        self.labels: dict[str, Counter] = {}

    def add(self, domain: str, split: str, doc_id: str, source: str, label: str | None, text: str) -> None:
        cap = self.cfg.max_docs_per_domain
        if cap is not None and self.seen[domain] >= cap:
            self.stats.skip("over_max_docs_per_domain")
            return
        self.seen[domain] += 1
        if split == "train" and self.valid[domain] == 0 and self.seen[domain] >= self.force_after:
            split = "valid"
        if split == "valid":
            self.valid[domain] += 1
        self.parts.add((split, domain), (doc_id, source, label, text))
        sample = self.samples.setdefault(
            domain, BottomKSample(max_chars=2000, max_docs=200, seed=0)
        )  # <= 400 KB a domain
        sample.offer(zlib.crc32(doc_id.encode("utf-8", "replace")) * 0x9E3779B1, text)
        self.labels.setdefault(domain, Counter())[label] += 1

    def close(self) -> None:
        self.parts.close()

    def domains(self) -> list[str]:
        return sorted(self.seen)

    def count(self, split: str, domain: str) -> int:
        return self.parts.rows[(split, domain)]


# --------------------------------------------------------------------------- descriptions

# not cluster._top_terms (another regex and score): sharing one would change cluster domain names or
# stats.json's terms
_TERM = re.compile(r"(?u)\b[a-zA-Z][a-zA-Z0-9_]{2,}\b")


def describe_domains(samples: dict[str, list[str]], n_terms: int = 8, n_examples: int = 3, chars: int = 240):
    """Most distinctive terms (class TF-IDF over per-domain samples) and a few short snippets."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    tf = {d: Counter(w.lower() for t in texts for w in _TERM.findall(t)) for d, texts in samples.items()}
    df: Counter[str] = Counter()
    for c in tf.values():
        df.update(c.keys())
    n = len(tf)
    out = {}
    for d, c in tf.items():
        total = sum(c.values()) or 1
        scored = sorted(
            ((cnt / total) * math.log(1 + n / df[w]), w)
            for w, cnt in c.items()
            if w not in ENGLISH_STOP_WORDS and cnt >= 2
        )
        terms = [w for _, w in sorted(scored, key=lambda s: (-s[0], s[1]))[:n_terms]]
        examples = [" ".join(t.split())[:chars] for t in samples[d][:n_examples]]
        out[d] = {"top_terms": terms, "examples": examples}
    return out


# --------------------------------------------------------------------------- the stage


def run_domains(
    cfg: DomainsConfig,
    out_dir: Path,
    seed: int = 0,
    assign_fn: AssignFn | None = None,
    progress: bool = True,
) -> DomainsResult:
    """Build the domains stage into ``out_dir`` (everything but ``manifest.json``)."""
    from tqdm.auto import tqdm

    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("text", "tokens", "clusters", "_staging"):  # leftovers of an interrupted attempt
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    seed = cfg.seed if cfg.seed is not None else seed
    if cfg.sources:
        sources = cfg.sources
    else:
        from moemix.pipeline.demo_corpus import build_demo_corpus

        demo = build_demo_corpus(Path(cfg.demo_cache_dir) if cfg.demo_cache_dir else None, progress=progress)
        sources = [demo.source_config()]
    label_column = cfg.label_column if cfg.mode != "cluster" else None
    if cfg.mode == "cluster":
        # labels are only carried along (nullable) in cluster mode; a missing label column is fine
        sources = [replace(s, label_column=None) for s in sources]

    stats = IngestStats()
    tok_sample = BottomKSample(cfg.tokenizer.train_sample_bytes, cfg.tokenizer.sample_doc_chars)
    router = DomainRouter(out_dir, cfg, stats)
    descriptions: dict[str, dict] = {}
    docs = ingest(sources, cfg.valid_fraction, label_column, cfg.batch_size, stats)
    bar = tqdm(desc="ingest", unit="doc", disable=not progress)

    models: dict[str, dict] = {}
    if cfg.mode == "label":
        slugs = SlugMap(cfg.max_domains, f"label column {label_column!r}" if label_column else "labels")
        for batch in docs:
            for d in batch:
                if d.split == "train":
                    tok_sample.offer(d.split_key, d.text)
                label = d.label if d.label is not None else d.source  # an unlabelled source is one domain
                router.add(slugs(label), d.split, d.id, d.source, label, d.text)
            bar.update(len(batch))
        bar.close()
        router.close()
        label_of = {slug: label for label, slug in slugs.map.items()}
    else:
        slugs, models = _run_clustered(
            cfg, out_dir, seed, docs, bar, tok_sample, router, assign_fn, descriptions, progress
        )
        label_of = {slug: label for label, slug in slugs.map.items()}

    domains, dropped = _check_small_domains(cfg, out_dir, router, stats)
    write_json_atomic(
        out_dir / ROUTING_NAME,
        {
            "mode": cfg.mode,
            "label_column": label_column,
            "labels": slugs.map,
            "models": models,
            "domains": domains,
        },
    )
    for d, desc in describe_domains({d: router.samples[d].texts() for d in domains}).items():
        descriptions.setdefault(d, desc)

    # ---- tokenizer
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
        tok_info = {"path": cfg.tokenizer.path}
    else:
        texts = tok_sample.texts()
        log.info("domains: training BPE (vocab %d) on %d docs", cfg.tokenizer.vocab_size, len(texts))
        tok = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, progress=progress)
        tok_info = {"trained_on_docs": len(texts), "trained_on_chars": sum(map(len, texts))}
    eos = eos_id(tok, cfg.tokenizer.path or "trained tokenizer")
    save_tokenizer(tok, out_dir / "tokenizer.json")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    tok_info.update({"vocab_size": vocab_size, "eos_id": eos})

    # ---- token shards
    tokens_dir = out_dir / "tokens"
    meta = TokensMeta(vocab_size=vocab_size, eos_id=eos, dtype="", domains=domains)
    for split in SPLITS:
        for key in ("tokens", "docs", "bytes"):
            getattr(meta, key)[split] = {}
    total_docs = sum(router.count(s, d) for s in SPLITS for d in domains)
    with tqdm(total=total_docs, desc="tokenize", unit="doc", disable=not progress) as tbar:
        for d in domains:
            for split in SPLITS:
                w = TokenShardWriter(tokens_dir, split, d, vocab_size, eos)
                meta.dtype = str(w.dtype)
                try:
                    for f in router.parts.files((split, d)):
                        for b in pq.ParquetFile(f).iter_batches(batch_size=cfg.batch_size, columns=["text"]):
                            texts = b.column(0).to_pylist()
                            for ids, t in zip(encode_batch(tok, texts), texts):
                                w.add(ids, len(t.encode("utf-8")))
                            tbar.update(len(texts))
                except BaseException:
                    w.abort()
                    raise
                w.close()
                meta.tokens[split][d] = w.n_tokens
                meta.docs[split][d] = w.n_docs
                meta.bytes[split][d] = w.n_bytes
    write_meta(tokens_dir, meta)

    # ---- assignments (from the final parts, so dropped domains are not listed)
    with atomic_path(out_dir / "assignments.parquet") as tmp, pq.ParquetWriter(tmp, ASSIGN_SCHEMA) as aw:
        for d in domains:
            for split in SPLITS:
                for f in router.parts.files((split, d)):
                    for b in pq.ParquetFile(f).iter_batches(
                        batch_size=65536, columns=["id", "source", "label"]
                    ):
                        n = b.num_rows
                        aw.write_batch(
                            pa.RecordBatch.from_arrays(
                                [
                                    *b.columns,
                                    pa.array([d] * n, pa.string()),
                                    pa.array([split] * n, pa.string()),
                                ],
                                schema=ASSIGN_SCHEMA,
                            )
                        )

    # ---- stats
    stats_doc = {
        "mode": cfg.mode,
        "seed": seed,
        "sources": [{"name": n, **v} for n, v in stats.per_source.items()],
        "docs_read": stats.docs_read,
        "docs_kept": sum(router.count(s, d) for s in SPLITS for d in domains),
        "duplicates_removed": stats.duplicates,
        "sampled_out": stats.sampled_out,
        "skipped": {k: v for k, v in stats.skipped.items()},
        "dropped_domains": dropped,
        "valid_fraction": cfg.valid_fraction,
        "tokenizer": tok_info,
        "domains": [
            {
                "name": d,
                "label": label_of.get(d),
                "docs": {s: meta.docs[s][d] for s in SPLITS},
                "tokens": {s: meta.tokens[s][d] for s in SPLITS},
                "bytes": {s: meta.bytes[s][d] for s in SPLITS},
                "top_terms": descriptions.get(d, {}).get("top_terms", []),
                "examples": descriptions.get(d, {}).get("examples", []),
                "labels": {str(k): v for k, v in router.labels[d].most_common(5)},
            }
            for d in domains
        ],
    }
    write_json_atomic(out_dir / "stats.json", to_jsonable(stats_doc))
    return DomainsResult(
        out_dir=out_dir, domains=domains, tokens=meta.tokens, stats_path=out_dir / "stats.json"
    )


def _check_small_domains(
    cfg: DomainsConfig, out_dir: Path, router: DomainRouter, stats: IngestStats
) -> tuple[list[str], dict[str, str]]:
    kept, dropped = [], {}
    for d in router.domains():
        n_train, n_valid = router.count("train", d), router.count("valid", d)
        reason = None
        if n_train + n_valid < cfg.min_docs_per_domain:
            reason = f"{n_train + n_valid} documents < min_docs_per_domain={cfg.min_docs_per_domain}"
        elif n_train == 0 or n_valid == 0:
            reason = f"{n_train} train / {n_valid} valid documents (need both)"
        if reason is None:
            kept.append(d)
            continue
        if cfg.small_domains == "error":
            raise MoemixError(f"domain {d!r}: {reason}")
        dropped[d] = reason
        stats.skip("in_dropped_domain", n_train + n_valid)
        for split in SPLITS:
            shutil.rmtree(out_dir / "text" / split / d, ignore_errors=True)
        msg = f"domains: dropping domain {d!r}: {reason}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    if not kept:
        raise MoemixError(
            "no domain has enough documents "
            f"({'; '.join(f'{d}: {r}' for d, r in dropped.items()) or 'no documents at all'})"
        )
    return kept, dropped


def _run_clustered(
    cfg: DomainsConfig,
    out_dir: Path,
    seed: int,
    docs,
    bar,
    tok_sample: BottomKSample,
    router: DomainRouter,
    assign_fn: AssignFn | None,
    descriptions: dict[str, dict],
    progress: bool,
) -> tuple[SlugMap, dict[str, dict]]:
    """Stage the documents that need clustering per group, fit a model per group, assign, route.

    Group ``""`` holds every document without a label (all of them in cluster mode) and gets the
    model in ``clusters/``; with ``split_labels`` each label is a group with its model in
    ``clusters/by_label/<label>/``. Labelled documents that are not split go straight to their domain.
    """
    from moemix.pipeline.cluster import ClusterModel, assign_parquet, fit_cluster_model

    hybrid = cfg.mode == "label+cluster"
    staging = out_dir / "_staging"
    shutil.rmtree(staging, ignore_errors=True)
    parts = PartRouter(staging / "docs", STAGING_SCHEMA, cfg.text_shard_rows)
    slugs = SlugMap(cfg.max_domains, f"label column {cfg.label_column!r}" if cfg.label_column else "labels")
    samples: dict[str, BottomKSample] = {}
    # the embedder only reads a prefix of each document; keeping more would only cost memory
    sample_chars = max(1000, cfg.cluster.embed.max_chars)
    for batch in docs:
        for d in batch:
            if d.split == "train":
                tok_sample.offer(d.split_key, d.text)
            label = d.label if hybrid else None  # cluster mode ignores labels entirely
            if label is not None and not cfg.split_labels:
                router.add(slugs(label), d.split, d.id, d.source, label, d.text)
                continue
            group = slugs(label) if label is not None else ""
            parts.add((group or "_all",), (d.id, d.source, label, d.text, d.split))
            sample = BottomKSample(max_chars=sample_chars, max_docs=cfg.cluster.sample_size, seed=seed)
            samples.setdefault(group, sample).offer(d.split_key, d.text)
        bar.update(len(batch))
    bar.close()
    parts.close()

    assign = assign_fn or (
        lambda m, f, o: assign_parquet(m, f, o, batch_size=cfg.batch_size, progress=progress)
    )
    taken = set(slugs.used)
    models: dict[str, dict] = {}
    for group in sorted(samples):
        texts = samples[group].texts()
        what = f"label {group!r}" if group else "the unlabelled documents" if hybrid else "the corpus"
        ccfg = cfg.cluster if not group else replace(cfg.cluster, n_domains=cfg.split_labels)
        if len(texts) < ccfg.n_domains:
            raise MoemixError(
                f"domains: {what} has {len(texts)} documents, fewer than the {ccfg.n_domains} clusters "
                "asked for "
                f"({'split_labels' if group else 'cluster.n_domains'}={ccfg.n_domains})"
            )
        if len(texts) < ccfg.n_fine_clusters:
            n_fine = max(ccfg.n_domains, len(texts) // 2)
            log.warning("domains: %s has only %d documents: using %d fine clusters", what, len(texts), n_fine)
            ccfg = replace(ccfg, n_fine_clusters=n_fine, sample_size=max(ccfg.sample_size, n_fine))
        model = fit_cluster_model(texts, ccfg, seed=seed, progress=progress)
        model_dir = out_dir / "clusters" / "by_label" / group if group else out_dir / "clusters"
        model.save(model_dir)
        model = ClusterModel.load(model_dir)
        names = []
        for n in model.domain_names:
            # a cluster name must not merge into a label's domain
            name = unique_name(slugify(f"{group}_{n}" if group else n), taken)
            taken.add(name)
            names.append(name)
        models[group] = {"dir": str(model_dir.relative_to(out_dir)), "names": names}
        for name, info in zip(names, model.describe()):
            descriptions[name] = {
                "top_terms": info.get("top_terms", []),
                "examples": info.get("examples", []),
            }
        in_files = parts.files((group or "_all",))
        assigned = assign(model_dir, in_files, staging / "assigned" / (group or "_all"))
        n_in = sum(pq.ParquetFile(f).metadata.num_rows for f in in_files)
        n_out = sum(pq.ParquetFile(f).metadata.num_rows for f in assigned)
        if n_in != n_out:  # a substituted assign_fn (e.g. Ray Data) must keep every row
            raise MoemixError(
                f"domains: cluster assignment returned {n_out} rows for {n_in} documents ({what})"
            )
        for f in assigned:
            for b in pq.ParquetFile(f).iter_batches(batch_size=cfg.batch_size):
                cols = b.to_pydict()
                for doc_id, src, label, text, split, dom in zip(
                    cols["id"], cols["source"], cols["label"], cols["text"], cols["split"], cols["domain_id"]
                ):
                    router.add(names[dom], split, doc_id, src, label, text)
    router.close()
    shutil.rmtree(staging, ignore_errors=True)
    return slugs, models


class DomainAssigner:
    """Place new documents into the domains of a finished domains stage, as the stage itself did.

    ``assign(texts, labels)`` returns a domain name per text, or None where the document would
    have gone to a domain that was dropped (too small) or carries a label the stage never saw.
    Labels matter in label and label+cluster modes (pass the source name for an unlabelled
    source in label mode); cluster mode ignores them.
    """

    def __init__(self, stage_dir: str | Path):
        import json

        self.dir = Path(stage_dir)
        path = self.dir / ROUTING_NAME
        if not path.exists():
            raise MoemixError(f"not a domains stage directory (missing {ROUTING_NAME}): {self.dir}")
        r = json.loads(path.read_text())
        self.mode: str = r["mode"]
        self.labels: dict[str, str] = r["labels"]
        self.models: dict[str, dict] = r["models"]
        self.domains: list[str] = r["domains"]
        self._loaded: dict[str, object] = {}

    def _model(self, group: str):
        from moemix.pipeline.cluster import ClusterModel

        if group not in self._loaded:
            self._loaded[group] = ClusterModel.load(self.dir / self.models[group]["dir"])
        return self._loaded[group]

    def assign(self, texts: list[str], labels: list[str | None] | None = None) -> list[str | None]:
        if labels is None:
            labels = [None] * len(texts)
        if len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        out: list[str | None] = [None] * len(texts)
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            if self.mode == "cluster" or label is None:
                if self.mode != "label" and "" in self.models:
                    groups.setdefault("", []).append(i)
                continue
            slug = self.labels.get(str(label))
            if slug is None:
                continue
            if slug in self.models:
                groups.setdefault(slug, []).append(i)
            else:
                out[i] = slug
        for group, idx in groups.items():
            names = self.models[group]["names"]
            for i, d in zip(idx, self._model(group).assign([texts[i] for i in idx])):
                out[i] = names[int(d)]
        kept = set(self.domains)
        return [d if d in kept else None for d in out]
