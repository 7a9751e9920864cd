"""Step 1 of the domains stage: read one unit, normalize, hash, and scatter it into hash partitions.

A document goes to partition ``dedup_key % partitions``, so every copy of a text lands in the same
partition and exact deduplication never needs more than one partition's hashes in one process. Each
read unit writes its own file per partition (``_work/partition/u<unit>/p<part>.parquet``), rows in
read order, so concatenating the units' files of a partition in unit order is corpus order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from moemix.domains.ingest import Doc, IngestStats, ReadUnit, SourceConfig, read_unit_docs
from moemix.domains.units import AtomicParquetWriter, load_done, save_done

PARTITION_SCHEMA = pa.schema(
    [
        ("pos", pa.int64()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("dedup_key", pa.uint64()),
        ("split_key", pa.uint64()),
    ]
)
# A partition's buffer is written (as one row group) at 1M characters, and the biggest one whenever all
# of them hold more than 16M: a read worker's memory stays bounded however many partitions there are,
# and so does the dedup worker's, which decodes one of these row groups at a time.
_FLUSH_CHARS = 1 << 20
_MAX_BUFFERED_CHARS = 16 << 20


@dataclass(frozen=True)
class PartitionTask:
    unit: ReadUnit
    source: SourceConfig
    work: str
    partitions: int
    # label column default for sources without their own (None in cluster mode)
    label_column: str | None
    # "label": domain key = label, else the source name; "hybrid": the label (None: clustered);
    # "none": nothing routes by label (cluster mode)
    route: str
    batch_size: int
    # distinct route keys recorded per unit; more than this is an error the driver reports
    max_keys: int


@dataclass
class PartitionSummary:
    stats: IngestStats
    rows: list[int]  # rows written per partition
    # route key -> corpus position of its first document (the driver names domains in that order)
    first_seen: dict[str, int] = field(default_factory=dict)


def unit_dir(work: str | Path, unit: int) -> Path:
    return Path(work) / "partition" / f"u{unit:05d}"


def partition_file(work: str | Path, unit: int, part: int) -> Path:
    return unit_dir(work, unit) / f"p{part:05d}.parquet"


def route_key(task_route: str, label: str | None, source: str) -> str | None:
    if task_route == "label":
        return label if label is not None else source  # an unlabelled source is one domain
    if task_route == "hybrid":
        return label
    return None


def partition_read_unit(task: PartitionTask) -> PartitionSummary:
    marker = unit_dir(task.work, task.unit.index).with_suffix(".done.pkl")
    done = load_done(marker)
    if done is not None:
        return done
    stats = IngestStats()
    writers = _PartitionWriters(task)
    first_seen: dict[str, int] = {}
    try:
        for docs in read_unit_docs(task.source, task.unit, task.label_column, task.batch_size, stats):
            for d in docs:
                key = route_key(task.route, d.label, d.source)
                if key is not None and key not in first_seen and len(first_seen) <= task.max_keys:
                    first_seen[key] = d.pos
                writers.add(d.dedup_key % task.partitions, d)
        rows = writers.close()
    finally:
        writers.abort()
    return save_done(marker, PartitionSummary(stats, rows, first_seen))


class _PartitionWriters:
    """One buffered, atomically written parquet file per partition that receives rows."""

    def __init__(self, task: PartitionTask):
        self.task = task
        self.buf: dict[int, list] = {}
        self.chars: dict[int, int] = {}
        self.rows = [0] * task.partitions
        self.total = 0
        self.files: dict[int, AtomicParquetWriter] = {}

    def add(self, part: int, d: Doc) -> None:
        self.buf.setdefault(part, []).append(d)
        self.chars[part] = self.chars.get(part, 0) + len(d.text)
        self.rows[part] += 1
        self.total += len(d.text)
        if self.chars[part] >= _FLUSH_CHARS or len(self.buf[part]) >= 8 * self.task.batch_size:
            self._flush(part)
        elif self.total > _MAX_BUFFERED_CHARS:  # many partitions, each under its own limit
            self._flush(max(self.chars, key=self.chars.__getitem__))

    def _flush(self, part: int) -> None:
        docs = self.buf.pop(part, [])
        self.total -= self.chars.pop(part, 0)
        if not docs:
            return
        if part not in self.files:
            path = partition_file(self.task.work, self.task.unit.index, part)
            self.files[part] = AtomicParquetWriter(path, PARTITION_SCHEMA)
        table = pa.table(
            {
                "pos": pa.array([d.pos for d in docs], pa.int64()),
                "id": [d.id for d in docs],
                "source": [d.source for d in docs],
                "label": pa.array([d.label for d in docs], pa.string()),
                "text": [d.text for d in docs],
                "dedup_key": pa.array([d.dedup_key for d in docs], pa.uint64()),
                "split_key": pa.array([d.split_key for d in docs], pa.uint64()),
            },
            schema=PARTITION_SCHEMA,
        )
        self.files[part].write(table)

    def close(self) -> list[int]:
        for part in sorted(self.buf):
            self._flush(part)
        for w in self.files.values():
            w.commit()
        self.files.clear()
        return self.rows

    def abort(self) -> None:
        for w in self.files.values():
            w.abort()
        self.files.clear()
