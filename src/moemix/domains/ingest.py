"""Streaming ingest: resolve sources into read units, read records, normalize them, hash them.

Nothing here holds a corpus in memory: local files are read batch by batch with pyarrow
(parquet, arrow, csv) or line by line (jsonl[.gz|.zst], text); hub datasets are opened with
``datasets.load_dataset(..., streaming=True)``. A read unit is one file of one source (or one hub
dataset): the unit of parallel reading in the domains stage, and the first half of every document's
position (``unit << 36 | row``), which fixes "first occurrence" for deduplication however many
workers read.

Train/validation membership is a pure function of a document's normalized content (a second
64-bit hash, below ``valid_fraction``), so it is stable across runs, sources and seeds, and
because duplicates are removed before anything is written the two splits never share a text.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import socket
import urllib.parse
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from moemix.domains.units import streaming_parquet
from moemix.errors import MoemixError

Format = Literal["auto", "parquet", "jsonl", "text", "arrow", "csv"]

_EXT_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".csv": "csv",
    ".tsv": "csv",
}
_COMPRESSIONS = (".gz", ".zst")
SKIP_REASONS = ("invalid_utf8", "empty", "missing_text", "bad_json", "missing_label")


@dataclass
class SourceConfig:
    """One input: a local file/folder/glob (``path``) or a Hugging Face hub dataset (``hub``)."""

    path: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    split: str = "train"
    format: Format = "auto"
    text_column: str = "text"
    id_column: str | None = None
    label_column: str | None = None
    # a constant label for the whole source (label mode with one file per domain)
    label: str | None = None
    name: str | None = None
    sample_fraction: float = 1.0
    # text format: one document per line (like HF's text loader) or per file
    text_unit: Literal["line", "file"] = "line"

    def validate(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise ValueError("a source needs exactly one of 'path' or 'hub'")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")

    def display(self) -> str:
        return self.path if self.path is not None else f"hub:{self.hub}"


@dataclass
class IngestStats:
    docs_read: int = 0
    docs_kept: int = 0
    duplicates: int = 0
    sampled_out: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in SKIP_REASONS})
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def merge(self, other: IngestStats) -> None:
        """Add another worker's counts (the stage aggregates per-unit stats; nothing is gathered)."""
        self.docs_read += other.docs_read
        self.docs_kept += other.docs_kept
        self.duplicates += other.duplicates
        self.sampled_out += other.sampled_out
        for k, v in other.skipped.items():
            self.skip(k, v)
        for name, counts in other.per_source.items():
            mine = self.per_source.setdefault(name, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v


# --------------------------------------------------------------------------- hashing / split


def normalize_for_hash(text: str) -> str:
    """Exact-duplicate key: whitespace runs collapsed, ends stripped (case and punctuation kept)."""
    return " ".join(text.split())


def content_hashes(text: str) -> tuple[int, int]:
    """(dedup key, split key): two independent 64-bit halves of one blake2b digest."""
    d = hashlib.blake2b(normalize_for_hash(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def is_valid(split_key: int, valid_fraction: float) -> bool:
    return (split_key % 1_000_000) < int(round(valid_fraction * 1_000_000))


def sample_keep(split_key: int, fraction: float) -> bool:
    # a different slice of the key than the split, so sampling doesn't bias the split
    return ((split_key >> 24) % 1_000_000) < int(round(fraction * 1_000_000))


# --------------------------------------------------------------------------- source resolution


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
    ext = os.path.splitext(name)[1]
    if ext not in _EXT_FORMATS:
        raise MoemixError(
            f"cannot tell the format of {path} from its extension {ext or '(none)'!r}; set 'format' on the "
            "source"
        )
    return _EXT_FORMATS[ext]


def _stem(path: Path) -> str:
    name = path.name
    for comp in _COMPRESSIONS:
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
    return os.path.splitext(name)[0]


# metadata that `datasets.save_to_disk` writes next to its .arrow shards
_HF_METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


def _is_data_file(p: Path) -> bool:
    if not p.is_file() or p.name.startswith(".") or p.name in _HF_METADATA:
        return False
    try:
        detect_format(p)
        return True
    except MoemixError:
        return False


def resolve_files(src: SourceConfig) -> list[Path]:
    """The files of a path source, in a deterministic (sorted) order."""
    assert src.path is not None
    p = Path(src.path).expanduser()
    if any(ch in src.path for ch in "*?["):
        files = [Path(f) for f in sorted(glob.glob(str(p), recursive=True)) if Path(f).is_file()]
        if not files:
            raise MoemixError(f"source path matches no files: {src.path}")
        return files
    if not p.exists():
        raise MoemixError(f"source path not found: {src.path}")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if _is_data_file(f))
        if not files:
            raise MoemixError(f"source folder has no readable data files: {src.path}")
        return files
    return [p]


def source_name(src: SourceConfig) -> str:
    if src.name:
        return src.name
    if src.hub:
        return src.hub.replace("/", "_")
    assert src.path is not None
    p = Path(src.path)
    if any(ch in src.path for ch in "*?["):
        parent = Path(*[part for part in p.parts if not any(ch in part for ch in "*?[")])
        return parent.name or "source"
    return p.name if p.is_dir() else _stem(p)


def unique_name(base: str, taken: Container[str], sep: str = "_") -> str:
    """``base``, or the first of ``base<sep>2``, ``base<sep>3``, ... that is not in ``taken``."""
    name, k = base, 2
    while name in taken:
        name, k = f"{base}{sep}{k}", k + 1
    return name


# --------------------------------------------------------------------------- readers
# Each reader yields lists of row dicts {text, id, label} (raw values; normalization is shared).
# A text value of None means the row had no usable text; bytes means it failed UTF-8 decoding.

Row = tuple[object, object, object]  # (text, id, label)


def _columns_needed(src: SourceConfig, label_column: str | None) -> list[str]:
    cols = [src.text_column]
    for c in (src.id_column, label_column):
        if c and c not in cols:
            cols.append(c)
    return cols


def _check_columns(
    names: list[str], needed: list[str], where: str, src: SourceConfig, label_column: str | None
):
    for c in needed:
        if c not in names:
            kind = "text" if c == src.text_column else ("id" if c == src.id_column else "label")
            raise MoemixError(
                f"{where}: missing {kind} column {c!r} (columns: {', '.join(map(str, names)) or 'none'})"
            )


def _rows_from_table(
    batch: pa.RecordBatch | pa.Table, src: SourceConfig, label_column: str | None
) -> list[Row]:
    n = batch.num_rows

    def col(name: str | None) -> list:
        if not name:
            return [None] * n
        c = batch.column(batch.schema.get_field_index(name))
        if pa.types.is_binary(c.type) or pa.types.is_large_binary(c.type):
            return c.to_pylist()  # decoded (and counted if invalid) downstream
        if not (pa.types.is_string(c.type) or pa.types.is_large_string(c.type)):
            c = c.cast(pa.string()) if name != src.text_column else c
        return c.to_pylist()

    return list(zip(col(src.text_column), col(src.id_column), col(label_column)))


def _read_parquet(
    path: Path, src: SourceConfig, label_column: str | None, batch_size: int
) -> Iterator[list[Row]]:

    try:
        pf = streaming_parquet(path)
    except Exception as e:
        raise MoemixError(f"cannot read parquet file {path}: {e}") from None
    needed = _columns_needed(src, label_column)
    _check_columns(pf.schema_arrow.names, needed, str(path), src, label_column)
    for batch in pf.iter_batches(batch_size=batch_size, columns=needed, use_threads=False):
        yield _rows_from_table(batch, src, label_column)


def _read_arrow(
    path: Path, src: SourceConfig, label_column: str | None, batch_size: int
) -> Iterator[list[Row]]:
    import pyarrow.ipc as ipc

    needed = _columns_needed(src, label_column)
    source = pa.memory_map(str(path), "r")
    try:
        reader = ipc.open_file(source)
        batches: Iterator[pa.RecordBatch] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        schema = reader.schema
    except pa.ArrowInvalid:
        source.seek(0)
        try:
            reader = ipc.open_stream(source)  # HF datasets' .arrow files are IPC streams
        except pa.ArrowInvalid as e:
            raise MoemixError(f"cannot read arrow file {path}: {e}") from None
        batches = iter(reader)
        schema = reader.schema
    _check_columns(schema.names, needed, str(path), src, label_column)
    for batch in batches:
        for off in range(0, batch.num_rows, batch_size):
            sub = batch.slice(off, batch_size).select(needed)
            yield _rows_from_table(sub, src, label_column)


def _read_csv(
    path: Path, src: SourceConfig, label_column: str | None, batch_size: int
) -> Iterator[list[Row]]:
    import pyarrow.csv as pcsv

    needed = _columns_needed(src, label_column)
    parse = pcsv.ParseOptions(
        delimiter="\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ",", newlines_in_values=True
    )
    read = pcsv.ReadOptions(block_size=1 << 22)

    def open_reader(convert: pcsv.ConvertOptions):
        try:
            return pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as e:
            raise MoemixError(f"cannot read csv file {path}: {str(e).splitlines()[0]}") from None

    # first look only at the header, then read the needed columns as raw bytes: ids like 007 must
    # not become 7, and a row of invalid UTF-8 is a counted skip, not a fatal decode error
    names = open_reader(pcsv.ConvertOptions()).schema.names
    _check_columns(names, needed, str(path), src, label_column)
    reader = open_reader(
        pcsv.ConvertOptions(
            include_columns=needed, column_types={c: pa.binary() for c in needed}, strings_can_be_null=False
        )
    )
    try:
        for batch in reader:
            for off in range(0, batch.num_rows, batch_size):
                yield _rows_from_table(batch.slice(off, batch_size), src, label_column)
    except pa.ArrowInvalid as e:
        raise MoemixError(f"cannot parse csv file {path}: {str(e).splitlines()[0]}") from None


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise MoemixError(
                f"reading {path} needs the 'zstandard' package (pip install moemix[zstd])"
            ) from None
        fh = open(path, "rb")  # noqa: SIM115 - closed by the wrapping reader
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh, closefd=True))
    return open(path, "rb")


def _read_jsonl(
    path: Path, src: SourceConfig, label_column: str | None, batch_size: int, stats: IngestStats
) -> Iterator[list[Row]]:
    needed = _columns_needed(src, label_column)
    rows: list[Row] = []
    checked = False
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if not checked and raw.lstrip().startswith(b"["):
                raise MoemixError(f"{path} holds a JSON array; expected JSON lines (one object per line)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.skip("invalid_utf8")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                stats.skip("bad_json")
                continue
            if not isinstance(obj, dict):
                stats.skip("bad_json")
                continue
            if not checked:
                # the first record decides the schema: a wrong column name fails fast and loudly
                _check_columns(list(obj), needed, f"{path} (line {lineno})", src, label_column)
                checked = True
            label = obj.get(label_column) if label_column else None
            rows.append((obj.get(src.text_column), obj.get(src.id_column) if src.id_column else None, label))
            if len(rows) >= batch_size:
                yield rows
                rows = []
    if rows:
        yield rows


def _read_text(path: Path, src: SourceConfig, batch_size: int, stats: IngestStats) -> Iterator[list[Row]]:
    if src.text_unit == "file":
        with _open_binary(path) as f:
            raw = f.read()
        try:
            yield [(raw.decode("utf-8"), None, None)]
        except UnicodeDecodeError:
            stats.skip("invalid_utf8")
        return
    rows: list[Row] = []
    with _open_binary(path) as f:
        for raw in f:
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                stats.skip("invalid_utf8")
                continue
            rows.append((line, None, None))
            if len(rows) >= batch_size:
                yield rows
                rows = []
    if rows:
        yield rows


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint, so an offline machine fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # can't probe through a proxy; let the client try (with its own timeouts)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _read_hub(src: SourceConfig, label_column: str | None, batch_size: int) -> Iterator[list[Row]]:
    if not hub_reachable():
        raise MoemixError(f"cannot reach the Hugging Face hub for dataset {src.hub}: offline?")
    try:
        import datasets

        ds = datasets.load_dataset(src.hub, src.hub_config, split=src.split, streaming=True)
    except Exception as e:  # any loader failure is a user-facing problem with this source
        raise MoemixError(
            f"cannot load hub dataset {src.hub} (split {src.split}): {str(e).splitlines()[0]}"
        ) from None
    needed = _columns_needed(src, label_column)
    rows: list[Row] = []
    checked = False
    for obj in ds:
        if not checked:
            _check_columns(list(obj), needed, f"hub dataset {src.hub}", src, label_column)
            checked = True
        rows.append(
            (
                obj.get(src.text_column),
                obj.get(src.id_column) if src.id_column else None,
                obj.get(label_column) if label_column else None,
            )
        )
        if len(rows) >= batch_size:
            yield rows
            rows = []
    if rows:
        yield rows


# --------------------------------------------------------------------------- read units


@dataclass(frozen=True)
class ReadUnit:
    """One file of one source (or a source's hub dataset): what one worker reads in one go."""

    index: int  # in corpus order: sources in config order, each source's files sorted
    source_index: int
    name: str  # the source's unique name
    file: str | None  # None: the source's hub dataset
    file_index: int = 0
    n_files: int = 1

    def position(self, row: int) -> int:
        """A document's corpus position: deterministic, and ordered as a one-process read would be."""
        return (self.index << POS_ROW_BITS) | row


POS_ROW_BITS = 36  # 68 billion rows per file


def plan_read_units(sources: list[SourceConfig]) -> list[ReadUnit]:
    """Every source's read units in corpus order; a missing path or an unreachable hub fails here."""
    units: list[ReadUnit] = []
    names: set[str] = set()
    for si, src in enumerate(sources):
        src.validate()
        name = unique_name(source_name(src), names)  # two sources called 'train' must stay distinguishable
        names.add(name)
        if src.hub:
            if not hub_reachable():
                raise MoemixError(f"cannot reach the Hugging Face hub for dataset {src.hub}: offline?")
            units.append(ReadUnit(len(units), si, name, None))
            continue
        files = resolve_files(src)
        for fi, f in enumerate(files):
            units.append(ReadUnit(len(units), si, name, str(f), fi, len(files)))
    return units


def input_bytes(units: list[ReadUnit]) -> int:
    """On-disk size of the units' files (hub datasets count as nothing: their size is unknown offline)."""
    return sum(os.path.getsize(u.file) for u in units if u.file is not None)


@dataclass
class Doc:
    """A normalized document before deduplication."""

    pos: int
    id: str
    source: str
    label: str | None
    text: str
    dedup_key: int  # 64-bit content hash: equal for exact duplicates
    split_key: int  # an independent 64-bit content hash: the split and every hash-ordered sample


def _as_str(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _as_text(value: object, stats: IngestStats) -> str | None:
    if value is None:
        stats.skip("missing_text")
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            stats.skip("invalid_utf8")
            return None
    if not isinstance(value, str):
        value = str(value)
    if "\ufffd" in value and value.count("\ufffd") * 20 > len(value):
        # mostly replacement characters: a decoder upstream already mangled it
        stats.skip("invalid_utf8")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. from json \ud800 escapes)
        stats.skip("invalid_utf8")
        return None
    if not value.strip():
        stats.skip("empty")
        return None
    return value


def _read_unit_rows(
    src: SourceConfig, unit: ReadUnit, label_column: str | None, batch_size: int, stats: IngestStats
) -> Iterator[list[Row]]:
    if unit.file is None:
        yield from _read_hub(src, label_column, batch_size)
        return
    path = Path(unit.file)
    fmt = src.format if src.format != "auto" else detect_format(path)
    if fmt == "parquet":
        it = _read_parquet(path, src, label_column, batch_size)
    elif fmt == "arrow":
        it = _read_arrow(path, src, label_column, batch_size)
    elif fmt == "csv":
        it = _read_csv(path, src, label_column, batch_size)
    elif fmt == "jsonl":
        it = _read_jsonl(path, src, label_column, batch_size, stats)
    elif fmt == "text":
        if label_column:
            raise MoemixError(
                f"{path}: text files have no columns, so label column {label_column!r} can't exist"
            )
        it = _read_text(path, src, batch_size, stats)
    else:  # pragma: no cover - Literal guards this
        raise MoemixError(f"{path}: unknown format {fmt!r}")
    try:
        yield from it
    except MoemixError:
        raise
    except (OSError, EOFError, pa.ArrowException) as e:  # truncated gzip, corrupt parquet, ...
        raise MoemixError(
            f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def effective_label_column(src: SourceConfig, default: str | None) -> str | None:
    return src.label_column or (None if src.label is not None else default)


def read_unit_docs(
    src: SourceConfig,
    unit: ReadUnit,
    label_column: str | None,
    batch_size: int,
    stats: IngestStats,
) -> Iterator[list[Doc]]:
    """Normalized, hashed documents of one read unit, in batches (not yet deduplicated).

    ``label_column`` is the default for sources that set neither ``label_column`` nor ``label``;
    documents of a source with neither have label None. ``stats`` counts reads and skips."""
    col = effective_label_column(src, label_column)
    per = stats.per_source.setdefault(unit.name, {"read": 0, "kept": 0, "duplicates": 0, "skipped": 0})
    row_no = 0
    skips_at_start = sum(stats.skipped.values())
    id_prefix = unit.name if unit.n_files == 1 else f"{unit.name}/{unit.file_index}"
    for rows in _read_unit_rows(src, unit, col, batch_size, stats):
        out = []
        for text_v, id_v, label_v in rows:
            row = row_no
            row_no += 1
            text = _as_text(text_v, stats)
            if text is None:
                continue
            if col:
                if label_v is None or (isinstance(label_v, str) and not label_v.strip()):
                    stats.skip("missing_label")
                    continue
                label = _as_str(label_v)
            else:
                label = src.label  # None: an unlabelled source (label mode uses its name)
            h_dedup, h_split = content_hashes(text)
            if src.sample_fraction < 1.0 and not sample_keep(h_split, src.sample_fraction):
                stats.sampled_out += 1
                per["sampled_out"] = per.get("sampled_out", 0) + 1
                continue
            doc_id = _as_str(id_v) if id_v is not None else f"{id_prefix}:{row}"
            out.append(Doc(unit.position(row), doc_id, unit.name, label, text, h_dedup, h_split))
        stats.docs_read += len(rows)
        per["read"] += len(rows)
        per["normalized"] = per.get("normalized", 0) + len(out)
        if out:
            yield out
    per["skipped"] = per.get("skipped", 0) + sum(stats.skipped.values()) - skips_at_start


def check_sources(sources: list[SourceConfig], units: list[ReadUnit], stats: IngestStats) -> None:
    """One line for a source that had no rows at all, or no row with usable text."""
    for si, src in enumerate(sources):
        names = {u.name for u in units if u.source_index == si}
        per = [stats.per_source.get(n, {}) for n in names] or [{}]
        read = sum(p.get("read", 0) for p in per)
        skipped = sum(p.get("skipped", 0) for p in per)
        usable = sum(p.get("normalized", 0) + p.get("sampled_out", 0) for p in per)
        if read == 0 and skipped == 0:
            raise MoemixError(f"source {src.display()} is empty (no rows)")
        if usable == 0:
            raise MoemixError(
                f"source {src.display()}: none of its rows has usable text "
                f"(column {src.text_column!r}; skipped: {_fmt_skips(stats)})"
            )


def ingest(
    sources: list[SourceConfig],
    valid_fraction: float,
    label_column: str | None = None,
    batch_size: int = 1024,
    stats: IngestStats | None = None,
) -> Iterator[list[IngestedDoc]]:
    """Read every source in corpus order, in one process: normalized, split-assigned documents, not
    deduplicated (the domains stage deduplicates by hash partition, ``moemix.domains.dedup``)."""
    stats = stats if stats is not None else IngestStats()
    units = plan_read_units(sources)
    for unit in units:
        src = sources[unit.source_index]
        for docs in read_unit_docs(src, unit, label_column, batch_size, stats):
            yield [
                IngestedDoc(
                    d.id, d.source, d.label, d.text, split_of(d.split_key, valid_fraction), d.split_key
                )
                for d in docs
            ]
    check_sources(sources, units, stats)


@dataclass
class IngestedDoc:
    id: str
    source: str
    label: str | None
    text: str
    split: str  # "train" | "valid"
    split_key: int  # 64-bit content hash, reused for deterministic sampling downstream


def split_of(split_key: int, valid_fraction: float) -> str:
    return "valid" if is_valid(split_key, valid_fraction) else "train"


def _fmt_skips(stats: IngestStats) -> str:
    return ", ".join(f"{k}={v}" for k, v in stats.skipped.items() if v) or "none"
