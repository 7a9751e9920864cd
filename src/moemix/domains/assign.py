"""Cluster assignment: the one loop that turns texts into domain ids with a fitted ``ClusterModel``,
used by the domains stage's route step, by ``assign_parquet`` and by ``moemix assign``.

Step 3 of the domains stage (``route_partition``) also lives here: it gives every deduplicated
document of a partition its domain (its label's, or its cluster's) and collects what the driver needs
to settle the domains: counts per split, description samples, and the hash-ordered candidates for
``max_docs_per_domain``.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moemix._io import atomic_path
from moemix.domains.cluster import MODEL_FILE, ClusterModel
from moemix.domains.dedup import SampleKeys, dedup_file, near_duplicates_of, spill_rows
from moemix.domains.partition import route_key
from moemix.domains.tokenizer import BottomKSample, mix64
from moemix.domains.units import (
    AtomicParquetWriter,
    file_version,
    load_done,
    save_done,
    streaming_parquet,
)
from moemix.errors import MoemixError

DESCRIBE_SAMPLE = {"max_chars": 2000, "max_docs": 200}  # <= 400 KB of text a domain
# the seed of the hash order that max_docs_per_domain keeps a prefix of (independent of the split's)
CAP_SEED = 0x6361


def assign_texts(model: ClusterModel, texts: list[object]) -> np.ndarray:
    """Domain id (int32) per text; a missing or non-string text is assigned as the empty string."""
    return model.assign([t if isinstance(t, str) else "" for t in texts]).astype(np.int32)


def assign_batches(
    model: ClusterModel, batches: Iterable[pa.RecordBatch], text_column: str = "text"
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    for batch in batches:
        yield batch, assign_texts(model, batch.column(text_column).to_pylist())


def load_model(model_dir: str) -> ClusterModel:
    """Each worker process loads a model once, however many partitions it routes (and again when the
    model is saved anew at the same place: its ``cluster_model.json`` is written last)."""
    marker = Path(model_dir) / MODEL_FILE
    if not marker.exists():
        return ClusterModel.load(Path(model_dir))  # its one-line error names the missing file
    return _load_model(model_dir, file_version(marker))


@lru_cache(maxsize=16)
def _load_model(model_dir: str, version: tuple[int, int]) -> ClusterModel:
    return ClusterModel.load(Path(model_dir))


def output_names(in_files: list[Path], suffix: str = ".parquet") -> list[str]:
    """Output file names, one per input, in input order; an index prefix disambiguates repeated names."""
    stems = [Path(f).stem for f in in_files]
    dup = len(set(stems)) < len(stems)
    return [f"{i:05d}-{s}{suffix}" if dup else f"{s}{suffix}" for i, s in enumerate(stems)]


def domain_schema(schema: pa.Schema) -> pa.Schema:
    if "domain_id" in schema.names:
        schema = schema.remove(schema.get_field_index("domain_id"))
    return schema.append(pa.field("domain_id", pa.int32()))


def add_domain_column(batch: pa.RecordBatch | pa.Table, ids: np.ndarray) -> pa.RecordBatch | pa.Table:
    """``batch`` (RecordBatch/Table) with ``domain_id`` replaced or appended."""
    if "domain_id" in batch.schema.names:
        batch = batch.drop_columns(["domain_id"])
    arrays = [*batch.columns, pa.array(ids, type=pa.int32())]
    names = [*batch.schema.names, "domain_id"]
    if isinstance(batch, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(arrays, names=names)
    return pa.Table.from_arrays(arrays, names=names)


def assign_parquet(
    model_dir: Path,
    in_files: list[Path],
    out_dir: Path,
    batch_size: int = 1024,
    *,
    text_column: str = "text",
    progress: bool = False,
    model: ClusterModel | None = None,
) -> list[Path]:
    """Stream each parquet file in batches, append an int32 ``domain_id`` column, write atomically.

    Memory is bounded by ``batch_size`` (plus one parquet row group), not by the corpus size.
    Returns the written paths in input order.
    """
    from tqdm.auto import tqdm

    model = model or ClusterModel.load(Path(model_dir))
    in_files = [Path(f) for f in in_files]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in in_files)
    written = []
    with tqdm(total=total, desc="assign", unit="doc", disable=not progress) as bar:
        for f, name in zip(in_files, output_names(in_files)):
            pf = streaming_parquet(f)
            if text_column not in pf.schema_arrow.names:
                raise MoemixError(
                    f"{f}: no column {text_column!r} (columns: {', '.join(pf.schema_arrow.names)})"
                )
            out_path = out_dir / name
            with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, domain_schema(pf.schema_arrow)) as w:
                for batch, ids in assign_batches(model, pf.iter_batches(batch_size=batch_size), text_column):
                    w.write_batch(add_domain_column(batch, ids))
                    bar.update(batch.num_rows)
            written.append(out_path)
    return written


# ------------------------------------------------------------------------------------ step 3: route

ROUTE_SCHEMA = pa.schema([("domain", pa.string())])


@dataclass(frozen=True)
class RouteTask:
    partition: int
    work: str
    partitions: int
    batch_size: int
    route: str  # as PartitionTask.route
    direct: dict[str, str]  # route key -> domain, for documents not clustered
    # cluster group -> (model dir, domain name per cluster id); group "" = unlabelled documents
    models: dict[str, tuple[str, tuple[str, ...]]]
    group_of_label: dict[str, str]
    ignore_labels: bool
    near_dedup: bool
    cap: int | None


@dataclass
class DomainTally:
    """One domain's share of a partition: what the driver needs, none of the documents themselves."""

    docs: Counter = field(default_factory=Counter)  # split -> documents
    labels: Counter = field(default_factory=Counter)
    # a uniform sample (by content hash) for top terms and examples; spilled to a sample file when the
    # partition is done, so the summary carries only its keys
    sample: BottomKSample | None = field(default_factory=lambda: BottomKSample(**DESCRIBE_SAMPLE, seed=0))
    sample_keys: SampleKeys | None = None
    # the smallest (cap key, pos, split) entries, at most ``cap`` of them (max-heap on negated keys)
    smallest: list = field(default_factory=list)
    first_train: tuple[int, int] | None = None  # (cap key, pos) of the train document first in hash order

    def merge(self, other: DomainTally, cap: int | None) -> None:
        self.docs.update(other.docs)
        self.labels.update(other.labels)
        for neg_key, neg_pos, split in other.smallest:
            _push_capped(self.smallest, (-neg_key, -neg_pos, split), cap)
        theirs = other.first_train
        if theirs is not None and (self.first_train is None or theirs < self.first_train):
            self.first_train = theirs

    def kept(self) -> list[tuple[int, int, str]]:
        """The capped sample as (cap key, pos, split), smallest key first."""
        return sorted((-k, -p, s) for k, p, s in self.smallest)


def _push_capped(heap: list, entry: tuple[int, int, str], cap: int | None) -> None:
    if cap is None:
        return
    item = (-entry[0], -entry[1], entry[2])
    if len(heap) < cap:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


@dataclass
class RouteSummary:
    tallies: dict[str, DomainTally]
    near_duplicates: Counter  # source -> near duplicates removed


def route_file(work: str | Path, part: int) -> Path:
    return Path(work) / "route" / f"p{part:05d}.parquet"


def route_partition(task: RouteTask) -> RouteSummary:
    marker = route_file(task.work, task.partition).with_suffix(".done.pkl")
    done = load_done(marker)
    if done is not None:
        return done
    removed = near_duplicates_of(task.work, task.partition, task.partitions) if task.near_dedup else None
    tallies: dict[str, DomainTally] = {}
    near: Counter = Counter()
    out = AtomicParquetWriter(route_file(task.work, task.partition), ROUTE_SCHEMA)
    try:
        pf_path = dedup_file(task.work, task.partition)
        pf = streaming_parquet(pf_path)
        first_row = 0  # of the current batch in the dedup file
        # the text is read only where a cluster model needs it; sampling goes by the stored lengths
        columns = ["pos", "source", "label", "split_key", "split", "chars"] + (
            ["text"] if task.models else []
        )
        for b in pf.iter_batches(batch_size=task.batch_size, columns=columns, use_threads=False):
            cols = b.to_pydict() if not task.models else b.drop_columns(["text"]).to_pydict()
            lengths = cols["chars"]
            text_col = b.column("text") if task.models else None
            n = b.num_rows
            domains: list[str | None] = [None] * n
            drop = (
                np.isin(np.asarray(cols["pos"], np.int64), removed)
                if removed is not None and len(removed)
                else np.zeros(n, bool)
            )
            by_group: dict[str, list[int]] = {}
            for i in range(n):
                if drop[i]:
                    near[cols["source"][i]] += 1
                    continue
                label = cols["label"][i]
                group = "" if task.ignore_labels or label is None else task.group_of_label.get(label)
                if group is not None and group in task.models:
                    by_group.setdefault(group, []).append(i)
                else:
                    domains[i] = task.direct[route_key(task.route, label, cols["source"][i])]
            for group, idx in by_group.items():
                model_dir, names = task.models[group]
                texts = text_col.take(pa.array(idx, pa.int64())).to_pylist()
                ids = assign_texts(load_model(model_dir), texts)
                for i, d in zip(idx, ids.tolist()):
                    domains[i] = names[d]
            for i, d in enumerate(domains):
                if d is None:
                    continue
                t = tallies.get(d)
                if t is None:
                    t = tallies[d] = DomainTally()
                split, key = cols["split"][i], int(cols["split_key"][i])
                t.docs[split] += 1
                t.labels[cols["label"][i]] += 1
                t.sample.offer_row(key, lengths[i], first_row + i)
                ck = mix64(key, CAP_SEED)
                _push_capped(t.smallest, (ck, cols["pos"][i], split), task.cap)
                if split == "train" and (t.first_train is None or (ck, cols["pos"][i]) < t.first_train):
                    t.first_train = (ck, cols["pos"][i])
            out.write(pa.table({"domain": pa.array(domains, pa.string())}, schema=ROUTE_SCHEMA))
            first_row += n
        out.commit()
        spilled = spill_rows(
            {f"describe-{d}": t.sample for d, t in tallies.items()}, pf_path, task.work, task.partition
        )
        for d, t in tallies.items():
            t.sample_keys, t.sample = spilled[f"describe-{d}"], None
    except BaseException:
        out.abort()
        raise
    return save_done(marker, RouteSummary(tallies, near))
