"""Step 2 of the domains stage: exact deduplication of one hash partition (and near-duplicate
candidates by MinHash LSH), the train/valid split, and the samples the driver fits on.

Exact: all copies of a text share a partition (step 1 partitions by content hash), so a partition
alone decides which copy survives: the first in corpus order, as a one-process read would keep. Two
passes keep memory at 8 bytes a document: the first reads only the hash column, the second streams
the text through.

Near duplicates: each surviving document's LSH band keys are scattered into partitions by key
(``_work/lsh/p<part>/q<key partition>.parquet``); ``collide_band_partition`` then finds, per band key,
every document but the first in corpus order, and writes those positions back per home partition.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moemix.domains.config import NearDedupConfig
from moemix.domains.ingest import is_valid
from moemix.domains.near_dedup import band_keys, lsh_params, signatures
from moemix.domains.partition import partition_file
from moemix.domains.tokenizer import BottomKSample
from moemix.domains.units import AtomicParquetWriter, load_done, save_done, streaming_parquet

DEDUP_SCHEMA = pa.schema(
    [
        ("pos", pa.int64()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("split_key", pa.uint64()),
        ("split", pa.string()),
        # characters of the text: what the route step samples by, without decoding a single text
        ("chars", pa.int32()),
    ]
)
BAND_SCHEMA = pa.schema([("key", pa.uint64()), ("pos", pa.int64()), ("part", pa.int32())])


@dataclass(frozen=True)
class SampleSpec:
    """What the driver fits on: the tokenizer's sample of training text and each cluster group's."""

    tokenizer_bytes: int | None  # None: a given tokenizer, nothing to sample
    tokenizer_doc_chars: int
    cluster_docs: int
    cluster_chars: int
    seed: int
    # label -> cluster group ("" = the unlabelled documents); labels absent here are not clustered
    group_of_label: dict[str, str] = field(default_factory=dict)
    cluster_unlabelled: bool = False
    ignore_labels: bool = False  # cluster mode: every document is in group ""


@dataclass(frozen=True)
class DedupTask:
    partition: int
    work: str
    units: tuple[int, ...]  # read units with rows in this partition, in corpus order
    valid_fraction: float
    batch_size: int
    samples: SampleSpec
    near: NearDedupConfig
    partitions: int


@dataclass
class SampleKeys:
    """A partition's sample as the driver sees it: keys and text sizes only. The texts stay in the
    partition's sample file until the driver has chosen which of them the merged sample keeps, so the
    driver never holds partitions x budget of text."""

    name: str
    keys: np.ndarray  # uint64, remixed as the sample ordered them, ascending
    sizes: np.ndarray  # int64 characters


@dataclass
class DedupSummary:
    rows: int
    duplicates: Counter  # source -> exact duplicates removed
    tokenizer_sample: SampleKeys | None
    cluster_samples: dict[str, SampleKeys]
    group_docs: Counter  # cluster group -> documents


SAMPLE_SCHEMA = pa.schema([("key", pa.uint64()), ("text", pa.string())])


def sample_file(work: str | Path, name: str, part: int) -> Path:
    return Path(work) / "samples" / name / f"p{part:05d}.parquet"


def spill_rows(
    samples: dict[str, BottomKSample], source: Path, work: str | Path, part: int
) -> dict[str, SampleKeys]:
    """Write each sample (offered by row, ``BottomKSample.offer_row``) to its sample file, reading the
    chosen rows' texts back from ``source`` in one pass; returns what the driver selects by."""
    import bisect

    rows = sorted({row for smp in samples.values() for _, _, row in smp.entries()})
    cut = max(smp.max_chars for smp in samples.values()) if samples else 0
    texts: dict[int, str] = {}
    if rows:
        pf = pq.ParquetFile(source)
        offset = 0
        for g in range(pf.metadata.num_row_groups):  # one row group at a time, skipping unwanted ones
            n = pf.metadata.row_group(g).num_rows
            lo, hi = bisect.bisect_left(rows, offset), bisect.bisect_left(rows, offset + n)
            if hi > lo:
                col = pf.read_row_group(g, columns=["text"], use_threads=False).column(0)
                picked = col.take(pa.array([r - offset for r in rows[lo:hi]], pa.int64()))
                texts.update(zip(rows[lo:hi], pc.utf8_slice_codeunits(picked, 0, cut).to_pylist()))
            offset += n
    out = {}
    for name, smp in samples.items():
        entries = smp.entries()
        keys = np.array([k for k, _, _ in entries], dtype=np.uint64)
        body = [texts[row][: smp.max_chars] for _, _, row in entries]
        w = AtomicParquetWriter(sample_file(work, name, part), SAMPLE_SCHEMA)
        w.write(pa.table({"key": pa.array(keys, pa.uint64()), "text": body}, schema=SAMPLE_SCHEMA))
        w.commit()
        out[name] = SampleKeys(name, keys, np.array([size for _, size, _ in entries], dtype=np.int64))
    return out


def gather_sample(
    work: str | Path,
    refs: list[tuple[int, SampleKeys]],
    budget: int | None,
    max_chars: int,
    max_docs: int | None,
) -> list[str]:
    """The merged sample of the partitions' samples (given in partition order): chosen by key and size
    exactly as ``BottomKSample.merge`` would, then only the chosen texts are read back."""
    chosen = BottomKSample(budget, max_chars, max_docs=max_docs)
    for part, ref in refs:
        for k, size in zip(ref.keys.tolist(), ref.sizes.tolist()):
            chosen.offer_entry(k, size, part)
    wanted: dict[int, set[int]] = {}
    for k, _, part in chosen.entries():
        wanted.setdefault(part, set()).add(k)
    texts: dict[int, str] = {}
    for part, keys in sorted(wanted.items()):
        name = next(ref.name for p, ref in refs if p == part)
        t = pq.read_table(sample_file(work, name, part))
        for k, text in zip(t.column("key").to_pylist(), t.column("text").to_pylist()):
            if k in keys:
                texts[k] = text
    return [texts[k] for k, _, _ in chosen.entries()]


def dedup_file(work: str | Path, part: int) -> Path:
    return Path(work) / "dedup" / f"p{part:05d}.parquet"


def band_file(work: str | Path, part: int, key_part: int) -> Path:
    return Path(work) / "lsh" / f"p{part:05d}" / f"q{key_part:05d}.parquet"


def removed_file(work: str | Path, key_part: int, part: int) -> Path:
    return Path(work) / "lsh_removed" / f"q{key_part:05d}" / f"p{part:05d}.npy"


def _group(spec: SampleSpec, label: str | None) -> str | None:
    if spec.ignore_labels or label is None:
        return "" if (spec.ignore_labels or spec.cluster_unlabelled) else None
    return spec.group_of_label.get(label)


def dedup_partition(task: DedupTask) -> DedupSummary:
    marker = dedup_file(task.work, task.partition).with_suffix(".done.pkl")
    done = load_done(marker)
    if done is not None:
        return done
    files = [partition_file(task.work, u, task.partition) for u in task.units]
    keys = [pq.read_table(f, columns=["dedup_key"], use_threads=False).column(0).to_numpy() for f in files]
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    keep = np.zeros(len(all_keys), dtype=bool)
    keep[np.unique(all_keys, return_index=True)[1]] = True  # first occurrence in corpus order
    del keys, all_keys

    spec = task.samples
    tok = BottomKSample(spec.tokenizer_bytes, spec.tokenizer_doc_chars) if spec.tokenizer_bytes else None
    clusters: dict[str, BottomKSample] = {}
    group_docs: Counter = Counter()
    dups: Counter = Counter()
    out = AtomicParquetWriter(dedup_file(task.work, task.partition), DEDUP_SCHEMA)
    bands = _BandWriters(task) if task.near.enabled else None
    offset = 0
    try:
        for f in files:
            for b in streaming_parquet(f).iter_batches(batch_size=task.batch_size, use_threads=False):
                n = b.num_rows
                mask = keep[offset : offset + n]
                offset += n
                if not mask.all():
                    dups.update(np.asarray(b.column("source").to_pylist(), dtype=object)[~mask].tolist())
                b = b.filter(pa.array(mask))
                if b.num_rows == 0:
                    continue
                skeys = b.column("split_key").to_numpy()
                split = ["valid" if is_valid(int(k), task.valid_fraction) else "train" for k in skeys]
                # lengths, not texts: the samples go by (key, size) and are read back afterwards, so only
                # MinHash needs the texts as Python strings
                chars = pc.utf8_length(b.column("text")).cast(pa.int32())
                lengths = chars.to_numpy(zero_copy_only=False).tolist()
                labels = b.column("label").to_pylist()
                first_row = out.rows  # this batch's rows in the partition's dedup file
                for j, (k, s, t, lab) in enumerate(zip(skeys.tolist(), split, lengths, labels)):
                    if tok is not None and s == "train":
                        tok.offer_row(k, t, first_row + j)
                    g = _group(spec, lab)
                    if g is not None:
                        group_docs[g] += 1
                        if g not in clusters:
                            clusters[g] = BottomKSample(
                                max_chars=spec.cluster_chars, max_docs=spec.cluster_docs, seed=spec.seed
                            )
                        clusters[g].offer_row(k, t, first_row + j)
                if bands is not None:
                    bands.add(b.column("pos").to_numpy(), b.column("text").to_pylist())
                table = (
                    pa.Table.from_batches([b.drop_columns(["dedup_key"])])
                    .append_column("split", pa.array(split, pa.string()))
                    .append_column("chars", chars)
                )
                out.write(table.select(DEDUP_SCHEMA.names))
        if bands is not None:
            bands.close()
        out.commit()
    except BaseException:
        out.abort()
        if bands is not None:
            bands.abort()
        raise
    samples = {f"cluster-{g or '_all'}": smp for g, smp in clusters.items()}
    if tok is not None:
        samples["tokenizer"] = tok
    spilled = spill_rows(samples, dedup_file(task.work, task.partition), task.work, task.partition)
    tok_keys = spilled["tokenizer"] if tok is not None else None
    cluster_keys = {g: spilled[f"cluster-{g or '_all'}"] for g in clusters}
    summary = DedupSummary(out.rows, dups, tok_keys, cluster_keys, group_docs)
    return save_done(marker, summary)


class _BandWriters:
    def __init__(self, task: DedupTask):
        self.task = task
        self.bands, self.rows = lsh_params(task.near.threshold, task.near.num_perm)
        self.files: dict[int, AtomicParquetWriter] = {}

    def add(self, pos: np.ndarray, texts: list[str]) -> None:
        near = self.task.near
        keys = band_keys(signatures(texts, near.num_perm, near.ngram), self.bands, self.rows)
        flat_keys = keys.reshape(-1)
        flat_pos = np.repeat(pos, self.bands)
        q = (flat_keys % np.uint64(self.task.partitions)).astype(np.int64)
        for kp in np.unique(q).tolist():
            sel = q == kp
            if kp not in self.files:
                self.files[kp] = AtomicParquetWriter(
                    band_file(self.task.work, self.task.partition, kp), BAND_SCHEMA
                )
            self.files[kp].write(
                pa.table(
                    {
                        "key": pa.array(flat_keys[sel], pa.uint64()),
                        "pos": pa.array(flat_pos[sel], pa.int64()),
                        "part": pa.array(np.full(int(sel.sum()), self.task.partition, np.int32)),
                    },
                    schema=BAND_SCHEMA,
                )
            )

    def close(self) -> None:
        for w in self.files.values():
            w.commit()

    def abort(self) -> None:
        for w in self.files.values():
            w.abort()


@dataclass(frozen=True)
class CollideTask:
    key_partition: int
    work: str
    partitions: int


def collide_band_partition(task: CollideTask) -> int:
    """Within one partition of band keys: every document sharing a band key with an earlier document
    (in corpus order) is a near duplicate. Writes the positions to drop per home partition; returns
    how many distinct documents this key partition flags."""
    marker = Path(task.work) / "lsh_removed" / f"q{task.key_partition:05d}.done.pkl"
    done = load_done(marker)
    if done is not None:
        return done
    files = [band_file(task.work, p, task.key_partition) for p in range(task.partitions)]
    tables = [pq.read_table(f, use_threads=False) for f in files if f.exists()]
    if tables:
        t = pa.concat_tables(tables)
        key, pos, part = (t.column(c).to_numpy() for c in ("key", "pos", "part"))
    else:
        key, pos, part = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    order = np.lexsort((pos, key))
    key, pos, part = key[order], pos[order], part[order]
    later = np.zeros(len(key), dtype=bool)
    later[1:] = key[1:] == key[:-1]  # not the first (smallest position) of its band key
    n = 0
    for p in range(task.partitions):
        drop = np.unique(pos[later & (part == p)])
        n += len(drop)
        path = removed_file(task.work, task.key_partition, p)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, drop)
    return save_done(marker, n)


def near_duplicates_of(work: str | Path, part: int, partitions: int) -> np.ndarray:
    """Sorted positions in home partition ``part`` that some key partition flagged."""
    found = [np.load(removed_file(work, q, part)) for q in range(partitions)]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
