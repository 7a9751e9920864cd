"""Stage 1: turn sources into named, tokenized domains with train/valid splits.

Modes
-----
- ``label``: a domain per distinct label value (slugged to ``[a-z0-9_]+``).
- ``cluster``: labels ignored; one cluster model (``moemix.domains.cluster``) fitted on a uniform
  sample of the deduplicated corpus assigns every document a domain.
- ``label+cluster``: documents with a label (a label column, or a source's constant ``label``) keep
  it as their domain; documents from unlabelled sources are clustered into ``cluster.n_domains``
  (model in ``clusters/``, so ``moemix assign`` works as in cluster mode). With ``split_labels: k``
  every label is additionally split into k clusters by its own model (fitted on that label's
  documents only, saved under ``clusters/by_label/<label>/``), giving domains ``<label>_<cluster>``.
  ``routing.json`` records the label -> domain map and which model names which domains, so
  ``DomainAssigner`` can place new documents exactly as the stage did.

Flow
----
Four steps over work units, each run by an executor (in this process, or on Ray Data workers), with
the driver only merging small summaries and fitting on bounded samples in between:

1. ``partition``: each read unit (one file) is read, normalized, hashed and scattered into hash
   partitions (``moemix.domains.partition``);
2. ``dedup``: each partition drops exact duplicates (first in corpus order wins), splits by content
   hash and samples for the tokenizer and the cluster models (``moemix.domains.dedup``); with
   ``near_dedup`` its MinHash band keys are cross-checked per key partition;
3. the driver trains the tokenizer and fits the cluster models on the merged samples; ``route``:
   each partition gives its documents their domains (``moemix.domains.assign``);
4. the driver settles the domains (caps, the one-valid-document rule, small domains); ``write``:
   each partition tokenizes its documents and writes its own shard of every domain
   (``moemix.domains.write``).

The partitions, not the workers, fix what is written and in which order, so 1 worker, N workers and
the in-process path give identical outputs. A unit's summary is saved next to its outputs, so a stage
killed part-way resumes at the first unfinished unit.

Small domains: a domain with fewer than ``min_docs_per_domain`` documents, or no train or no valid
document, is dropped with a warning and listed in ``stats.json["dropped_domains"]``
(``small_domains: error`` makes it a MoemixError instead). A domain of at least
``ceil(1/valid_fraction)`` documents that all hashed to train gets its first train document in hash
order moved to valid; splits stay disjoint because documents are unique after deduplication.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from moemix._io import stable_hash, to_jsonable, write_json_atomic
from moemix.domains.assign import DESCRIBE_SAMPLE, DomainTally, RouteSummary, RouteTask, route_partition
from moemix.domains.cluster import MODEL_FILE, ClusterModel, fit_cluster_model
from moemix.domains.config import DomainsConfig, DomainsResult
from moemix.domains.dedup import (
    CollideTask,
    DedupSummary,
    DedupTask,
    SampleSpec,
    collide_band_partition,
    dedup_partition,
    gather_sample,
)
from moemix.domains.ingest import (
    IngestStats,
    SourceConfig,
    check_sources,
    input_bytes,
    plan_read_units,
    unique_name,
)
from moemix.domains.partition import PartitionTask, partition_read_unit
from moemix.domains.routing import ROUTING_NAME, SlugMap, describe_domains, slugify
from moemix.domains.tokenizer import eos_id, load_tokenizer, save_tokenizer, train_bpe
from moemix.domains.units import Executor, raise_first_error, run_in_process
from moemix.domains.write import WriteTask, write_partition
from moemix.errors import MoemixError
from moemix.token_shards import SPLITS, TokensMeta, token_dtype, write_meta

log = logging.getLogger(__name__)

WORK_DIR = "_work"
# raised when a step's intermediate files change: an interrupted attempt by other code is not resumed
WORK_FORMAT = 1
OUTPUT_DIRS = ("text", "tokens", "clusters", "assignments")
_AUTO_PARTITION_BYTES = 128 << 20
_MIN_AUTO_PARTITIONS = 4
_ROUTE = {"label": "label", "label+cluster": "hybrid", "cluster": "none"}


def auto_partitions(n_bytes: int) -> int:
    return max(_MIN_AUTO_PARTITIONS, math.ceil(n_bytes / _AUTO_PARTITION_BYTES))


def run_domains(
    cfg: DomainsConfig,
    out_dir: Path,
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = True,
    sources: list[SourceConfig] | None = None,
) -> DomainsResult:
    """Build the domains stage into ``out_dir`` (everything but ``manifest.json``).

    ``sources`` overrides ``cfg.sources`` (the pipeline passes the demo corpus that way); ``executor``
    runs the work units (default: in this process)."""
    cfg.validate()
    run = executor or run_in_process
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed if cfg.seed is not None else seed
    sources = list(sources if sources is not None else cfg.sources)
    if not sources:
        raise MoemixError("domains.sources: no sources given")
    label_column = cfg.label_column if cfg.mode != "cluster" else None
    if cfg.mode == "cluster":
        # labels are only carried along (nullable) in cluster mode; a missing label column is fine
        sources = [replace(s, label_column=None) for s in sources]
    units = plan_read_units(sources)
    partitions = cfg.partitions or auto_partitions(input_bytes(units))
    plan = {"units": [asdict(u) for u in units], "partitions": partitions, "work_format": WORK_FORMAT}
    work = _prepare_work_dir(out_dir, plan)
    route = _ROUTE[cfg.mode]
    timer = _StepTimer(progress)

    # ---- 1. read and partition
    parts = _run(
        run,
        partition_read_unit,
        [
            PartitionTask(
                u,
                sources[u.source_index],
                str(work),
                partitions,
                label_column,
                route,
                cfg.batch_size,
                cfg.max_domains,
            )
            for u in units
        ],
        "read",
        [os.path.getsize(u.file) if u.file else 0 for u in units],
    )
    stats = IngestStats()
    first_seen: dict[str, int] = {}
    for s in parts:
        stats.merge(s.stats)
        for key, pos in s.first_seen.items():
            first_seen[key] = min(pos, first_seen.get(key, pos))
    check_sources(sources, units, stats)
    what = f"label column {label_column!r}" if label_column else "labels"
    slugs = SlugMap(cfg.max_domains, what)
    for key in sorted(first_seen, key=first_seen.__getitem__):
        slugs(key)  # domains named in corpus order of first appearance, as a one-process read does
    timer.done("read", f"{stats.docs_read} documents from {len(units)} files into {partitions} partitions")

    # ---- 2. exact dedup, split, samples (and near-duplicate band keys)
    hybrid_split = cfg.mode == "label+cluster" and cfg.split_labels > 0
    spec = SampleSpec(
        tokenizer_bytes=None if cfg.tokenizer.path else cfg.tokenizer.train_sample_bytes,
        tokenizer_doc_chars=cfg.tokenizer.sample_doc_chars,
        cluster_docs=cfg.cluster.sample_size,
        # the embedder only reads a prefix of each document; keeping more would only cost memory
        cluster_chars=max(1000, cfg.cluster.embed.max_chars),
        seed=seed,
        group_of_label=dict(slugs.map) if hybrid_split else {},
        cluster_unlabelled=cfg.mode == "label+cluster",
        ignore_labels=cfg.mode == "cluster",
    )
    dedup_tasks = [
        DedupTask(
            p,
            str(work),
            tuple(u.index for u, s in zip(units, parts) if s.rows[p]),
            cfg.valid_fraction,
            cfg.batch_size,
            spec,
            cfg.near_dedup,
            partitions,
        )
        for p in range(partitions)
    ]
    dedup_cost = [sum(x.rows[p] for x in parts) for p in range(partitions)]

    def route_tasks(
        direct: dict[str, str], models: dict[str, tuple[str, tuple[str, ...]]]
    ) -> list[RouteTask]:
        return [
            RouteTask(
                p,
                str(work),
                partitions,
                cfg.batch_size,
                route,
                direct,
                models,
                spec.group_of_label,
                spec.ignore_labels,
                cfg.near_dedup.enabled,
                cfg.max_docs_per_domain,
            )
            for p in range(partitions)
        ]

    routes: list | None = None
    if routes_with_dedup(cfg):
        pairs = _run(
            run,
            dedup_then_route,
            [DedupRouteTask(d, r) for d, r in zip(dedup_tasks, route_tasks(dict(slugs.map), {}))],
            "dedup+route",
            dedup_cost,
        )
        dedups, routes = [d for d, _ in pairs], [r for _, r in pairs]
    else:
        dedups = _run(run, dedup_partition, dedup_tasks, "dedup", dedup_cost)
    rows = [d.rows for d in dedups]
    group_docs: Counter = Counter()
    duplicates: Counter = Counter()
    for d in dedups:
        duplicates.update(d.duplicates)
        group_docs.update(d.group_docs)
    tok_texts = None
    if spec.tokenizer_bytes:
        refs = [(p, d.tokenizer_sample) for p, d in enumerate(dedups) if d.tokenizer_sample is not None]
        tok_texts = gather_sample(work, refs, spec.tokenizer_bytes, spec.tokenizer_doc_chars, None)
    group_texts: dict[str, list[str]] = {}
    for g in sorted({g for d in dedups for g in d.cluster_samples}):
        refs = [(p, d.cluster_samples[g]) for p, d in enumerate(dedups) if g in d.cluster_samples]
        group_texts[g] = gather_sample(work, refs, None, spec.cluster_chars, spec.cluster_docs)
    n_near_flagged = 0
    if cfg.near_dedup.enabled:
        n_near_flagged = sum(
            _run(
                run,
                collide_band_partition,
                [CollideTask(q, str(work), partitions) for q in range(partitions)],
                "near-dedup",
            )
        )
    timer.done("dedup", f"{sum(duplicates.values())} exact duplicates removed")

    # ---- 3. tokenizer and cluster models on the samples, then route every document
    descriptions: dict[str, dict] = {}
    models = _fit_cluster_models(cfg, out_dir, seed, slugs, group_texts, group_docs, descriptions, progress)
    tok_info = _tokenizer(cfg, out_dir, tok_texts, progress)
    direct = {
        key: slug for key, slug in slugs.map.items() if not (hybrid_split and key in spec.group_of_label)
    }
    if routes is None:
        routes = _run(
            run,
            route_partition,
            route_tasks(direct, {g: (str(out_dir / m["dir"]), tuple(m["names"])) for g, m in models.items()}),
            "route",
            rows,
        )
    tallies: dict[str, DomainTally] = {}
    near: Counter = Counter()
    for r in routes:
        near.update(r.near_duplicates)
        for d, t in r.tallies.items():
            if d not in tallies:
                tallies[d] = DomainTally()
            tallies[d].merge(t, cfg.max_docs_per_domain)
    timer.done("route", f"{len(tallies)} domains")

    # ---- 4. settle the domains, then tokenize and write every partition
    settled = _settle(cfg, tallies, stats)
    label_of = {slug: label for label, slug in slugs.map.items()}
    write_json_atomic(
        out_dir / ROUTING_NAME,
        {
            "mode": cfg.mode,
            "label_column": label_column,
            "labels": slugs.map,
            "models": models,
            "domains": settled.domains,
        },
    )
    described = {}
    for d in settled.domains:
        refs = [(p, r.tallies[d].sample_keys) for p, r in enumerate(routes) if d in r.tallies]
        described[d] = gather_sample(
            work, refs, None, DESCRIBE_SAMPLE["max_chars"], DESCRIBE_SAMPLE["max_docs"]
        )
    for d, desc in describe_domains(described).items():
        descriptions.setdefault(d, desc)
    _sweep_temp_files(out_dir)  # a write unit killed mid-file left its temp file behind
    writes = _run(
        run,
        write_partition,
        [
            WriteTask(
                p,
                str(work),
                str(out_dir),
                cfg.batch_size,
                tok_info["vocab_size"],
                tok_info["eos_id"],
                frozenset(settled.domains),
                settled.cap_limit,
                settled.to_valid,
            )
            for p in range(partitions)
        ],
        "write",
        rows,
    )
    meta = TokensMeta(
        vocab_size=tok_info["vocab_size"],
        eos_id=tok_info["eos_id"],
        dtype=str(token_dtype(tok_info["vocab_size"])),
        domains=settled.domains,
    )
    for split in SPLITS:
        for field_name in ("tokens", "docs", "bytes", "files"):
            getattr(meta, field_name)[split] = {
                d: [] if field_name == "files" else 0 for d in settled.domains
            }
    capped = 0
    for w in writes:  # partition order: the order each domain's parts are read in
        capped += w.capped
        for (split, d), (n_tok, n_doc, n_byte, rel) in w.shards.items():
            meta.tokens[split][d] += n_tok
            meta.docs[split][d] += n_doc
            meta.bytes[split][d] += n_byte
            meta.files[split][d].append(rel)
    for split in SPLITS:
        for d in settled.domains:
            if not meta.files[split][d]:  # a split's shard must exist even when empty
                rel = f"{split}/{d}/empty.bin"
                (out_dir / "tokens" / rel).parent.mkdir(parents=True, exist_ok=True)
                (out_dir / "tokens" / rel).touch()
                meta.files[split][d].append(rel)
    write_meta(out_dir / "tokens", meta)
    stats.skip("over_max_docs_per_domain", capped)
    timer.done("write", f"{sum(sum(v.values()) for v in meta.tokens.values())} tokens")

    # ---- stats
    per_source = {n: dict(v) for n, v in stats.per_source.items()}
    for n, v in per_source.items():
        v["duplicates"] = duplicates.get(n, 0)
        v["near_duplicates"] = near.get(n, 0)
        v["kept"] = v.get("normalized", 0) - v["duplicates"] - v["near_duplicates"]
    stats_doc = {
        "mode": cfg.mode,
        "seed": seed,
        "partitions": partitions,
        "sources": [{"name": n, **v} for n, v in per_source.items()],
        "docs_read": stats.docs_read,
        "docs_kept": sum(meta.docs[s][d] for s in SPLITS for d in settled.domains),
        "duplicates_removed": sum(duplicates.values()),
        "near_duplicates_removed": sum(near.values()),
        "near_duplicate_candidates": n_near_flagged,
        "sampled_out": stats.sampled_out,
        "skipped": dict(stats.skipped),
        "dropped_domains": settled.dropped,
        "valid_fraction": cfg.valid_fraction,
        "tokenizer": {k: v for k, v in tok_info.items()},
        "domains": [
            {
                "name": d,
                "label": label_of.get(d),
                "docs": {s: meta.docs[s][d] for s in SPLITS},
                "tokens": {s: meta.tokens[s][d] for s in SPLITS},
                "bytes": {s: meta.bytes[s][d] for s in SPLITS},
                "top_terms": descriptions.get(d, {}).get("top_terms", []),
                "examples": descriptions.get(d, {}).get("examples", []),
                "labels": {str(k): v for k, v in tallies[d].labels.most_common(5)},
            }
            for d in settled.domains
        ],
    }
    write_json_atomic(out_dir / "stats.json", to_jsonable(stats_doc))
    shutil.rmtree(work, ignore_errors=True)
    return DomainsResult(
        out_dir=out_dir, domains=settled.domains, tokens=meta.tokens, stats_path=out_dir / "stats.json"
    )


def routes_with_dedup(cfg: DomainsConfig) -> bool:
    """Label mode without near-duplicate removal: every document's domain is its label's, known since
    the read step, so each partition is routed right after its dedup by the same worker. That saves a
    step (on Ray, an actor pool's start-up: ~2 s of a 60 s stage on 2 workers) and changes no output."""
    return cfg.mode == "label" and not cfg.near_dedup.enabled


@dataclass(frozen=True)
class DedupRouteTask:
    dedup: DedupTask
    route: RouteTask


def dedup_then_route(task: DedupRouteTask) -> tuple[DedupSummary, RouteSummary]:
    """Steps 2 and 3 of one partition in one unit (label mode; see ``run_domains``). Each step keeps its
    own done marker, so a unit killed between them resumes at the route."""
    return dedup_partition(task.dedup), route_partition(task.route)


class _StepTimer:
    def __init__(self, progress: bool):
        self.t = time.time()
        self.progress = progress

    def done(self, step: str, what: str) -> None:
        now = time.time()
        log.info("domains: %s done in %.1f s (%s)", step, now - self.t, what)
        self.t = now


def _run(run: Executor, fn, units: list, what: str, cost: list[int] | None = None) -> list:
    """Run ``units`` (biggest ``cost`` first, so no worker is left with a big unit at the end) and
    return their summaries in unit order."""
    order = sorted(range(len(units)), key=lambda i: -cost[i]) if cost else list(range(len(units)))
    results = raise_first_error(run(fn, [units[i] for i in order], what=what), len(units), what)
    out: list = [None] * len(units)
    for i, r in zip(order, results):
        out[i] = r
    return out


def _sweep_temp_files(out_dir: Path) -> None:
    for d in ("text", "tokens", "assignments"):
        for f in (out_dir / d).rglob(".*.tmp") if (out_dir / d).exists() else ():
            f.unlink(missing_ok=True)


def _prepare_work_dir(out_dir: Path, plan: dict) -> Path:
    """The work dir of this plan: kept from an interrupted attempt (resume), else started empty."""
    work = out_dir / WORK_DIR
    key = stable_hash(plan)
    marker = work / "plan.key"
    if not (marker.exists() and marker.read_text() == key):
        shutil.rmtree(work, ignore_errors=True)
        for stale in OUTPUT_DIRS:  # leftovers of an attempt at another plan
            shutil.rmtree(out_dir / stale, ignore_errors=True)
        work.mkdir(parents=True)
        marker.write_text(key)
    return work


def _tokenizer(cfg: DomainsConfig, out_dir: Path, sample: list[str] | None, progress: bool) -> dict:
    path = out_dir / "tokenizer.json"
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
        info: dict = {"path": cfg.tokenizer.path}
        save_tokenizer(tok, path)
    else:
        texts = sample or []
        info = {"trained_on_docs": len(texts), "trained_on_chars": sum(map(len, texts))}
        if path.exists():  # trained by an interrupted attempt on this same sample
            tok = load_tokenizer(path)
        else:
            log.info("domains: training BPE (vocab %d) on %d docs", cfg.tokenizer.vocab_size, len(texts))
            tok = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, progress=progress)
            save_tokenizer(tok, path)
    info["eos_id"] = eos_id(tok, cfg.tokenizer.path or "trained tokenizer")
    info["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    return info


def _fit_cluster_models(
    cfg: DomainsConfig,
    out_dir: Path,
    seed: int,
    slugs: SlugMap,
    samples: dict[str, list[str]],
    group_docs: Counter,
    descriptions: dict[str, dict],
    progress: bool,
) -> dict[str, dict]:
    """A model per cluster group ("" = the unlabelled documents, else a label split further)."""
    hybrid = cfg.mode == "label+cluster"
    taken = set(slugs.used)
    models: dict[str, dict] = {}
    for group in sorted(samples):
        texts = samples[group]
        what = f"label {group!r}" if group else "the unlabelled documents" if hybrid else "the corpus"
        ccfg = cfg.cluster if not group else replace(cfg.cluster, n_domains=cfg.split_labels)
        n_docs = group_docs[group]
        if n_docs < ccfg.n_domains:
            raise MoemixError(
                f"domains: {what} has {n_docs} documents, fewer than the {ccfg.n_domains} clusters asked for "
                f"({'split_labels' if group else 'cluster.n_domains'}={ccfg.n_domains})"
            )
        if len(texts) < ccfg.n_fine_clusters:
            n_fine = max(ccfg.n_domains, len(texts) // 2)
            log.warning("domains: %s has only %d documents: using %d fine clusters", what, len(texts), n_fine)
            ccfg = replace(ccfg, n_fine_clusters=n_fine, sample_size=max(ccfg.sample_size, n_fine))
        model_dir = out_dir / "clusters" / "by_label" / group if group else out_dir / "clusters"
        if not (model_dir / MODEL_FILE).exists():  # else fitted by an interrupted attempt
            fit_cluster_model(texts, ccfg, seed=seed, progress=progress).save(model_dir)
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
    return models


class _Settled:
    def __init__(self) -> None:
        self.domains: list[str] = []
        self.dropped: dict[str, str] = {}
        self.cap_limit: dict[str, tuple[int, int]] = {}
        self.to_valid: frozenset[int] = frozenset()


def _settle(cfg: DomainsConfig, tallies: dict[str, DomainTally], stats: IngestStats) -> _Settled:
    """Caps, the one-valid-document rule and small domains, decided once from the merged tallies."""
    out = _Settled()
    force_after = math.ceil(1.0 / cfg.valid_fraction)
    moves: set[int] = set()
    cap = cfg.max_docs_per_domain
    for d in sorted(tallies):
        t = tallies[d]
        docs = Counter(t.docs)
        first_train = t.first_train
        if cap is not None and sum(docs.values()) > cap:
            kept = t.kept()
            out.cap_limit[d] = (kept[-1][0], kept[-1][1])
            docs = Counter(split for _, _, split in kept)
            trains = [(k, p) for k, p, s in kept if s == "train"]
            first_train = trains[0] if trains else None
        n_train, n_valid = docs["train"], docs["valid"]
        if n_valid == 0 and n_train >= force_after and first_train is not None:
            moves.add(first_train[1])
            n_train, n_valid = n_train - 1, 1
        reason = None
        if n_train + n_valid < cfg.min_docs_per_domain:
            reason = f"{n_train + n_valid} documents < min_docs_per_domain={cfg.min_docs_per_domain}"
        elif n_train == 0 or n_valid == 0:
            reason = f"{n_train} train / {n_valid} valid documents (need both)"
        if reason is None:
            out.domains.append(d)
            continue
        if cfg.small_domains == "error":
            raise MoemixError(f"domain {d!r}: {reason}")
        out.dropped[d] = reason
        stats.skip("in_dropped_domain", n_train + n_valid)
        msg = f"domains: dropping domain {d!r}: {reason}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    if not out.domains:
        raise MoemixError(
            "no domain has enough documents "
            f"({'; '.join(f'{d}: {r}' for d, r in out.dropped.items()) or 'no documents at all'})"
        )
    out.to_valid = frozenset(moves)
    return out
