"""Work units of the domains stage and the executors that run them.

Every step of the stage is a pure function of one unit (a read unit, a hash partition) that reads and
writes files under the stage directory and returns a small picklable summary. An executor maps such a
function over a list of units and returns the summaries in unit order: ``run_in_process`` here,
``moemix.ray_jobs.data.ray_data_executor`` on a Ray cluster. Because the units, not the workers, fix
what is written and in which order, any number of workers gives the same outputs.

A unit finished once is not redone: its summary is pickled next to its outputs (written last,
atomically), so a stage killed part-way resumes at the first unfinished unit.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from moemix._io import atomic_path
from moemix.errors import MoemixError


class Executor(Protocol):
    def __call__(self, fn: Callable[[Any], Any], units: list[Any], *, what: str) -> list[Any]: ...


@dataclass(frozen=True)
class UnitError:
    """A user-facing error raised inside a unit, carried back as data so it crosses processes intact."""

    message: str


def call_unit(fn: Callable[[Any], Any], unit: Any) -> Any:
    try:
        return fn(unit)
    except MoemixError as e:
        return UnitError(str(e))


def run_in_process(fn: Callable[[Any], Any], units: list[Any], *, what: str = "") -> list[Any]:
    return [call_unit(fn, u) for u in units]


def raise_first_error(results: list[Any], n_units: int, what: str) -> list[Any]:
    """The results, or the first unit's error in unit order (the same error however many workers ran)."""
    if len(results) != n_units:
        raise MoemixError(f"domains ({what}): {len(results)} of {n_units} work units came back")
    for r in results:
        if isinstance(r, UnitError):
            raise MoemixError(r.message)
    return results


def load_done(marker: Path) -> Any | None:
    """A finished unit's summary, or None when the unit has not finished."""
    if not marker.exists():
        return None
    with open(marker, "rb") as f:
        return pickle.load(f)


def save_done(marker: Path, summary: Any) -> Any:
    marker.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp, open(tmp, "wb") as f:
        pickle.dump(summary, f, protocol=pickle.HIGHEST_PROTOCOL)
    return summary


def limit_threads(n: int) -> None:
    """Pin this worker's native thread pools to its CPU share (set before they first start), and give
    Arrow the system allocator: mimalloc keeps per-thread heaps of freed blocks, which made a worker's
    RSS climb with the size of the partition it streamed (the reads themselves run on one thread:
    ``use_threads=False`` throughout the stage)."""
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(max(1, n)))
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    _cap_mmap_threshold(256 << 10)


def _cap_mmap_threshold(nbytes: int) -> None:
    """Serve allocations above ``nbytes`` with their own mmap, always. glibc's default threshold is
    dynamic: freeing one big block (a decoded row group, a batch's buffers) raises it, after which such
    blocks come from the heap, where the texts a worker keeps pin them and RSS climbs with the data
    streamed (measured: route step 162 -> 201 MB for a 10x partition, 161 -> 183 MB with this)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD (an explicit value also ends the dynamic one)
    except (OSError, AttributeError):
        pass


class AtomicParquetWriter:
    """A parquet file written under a temp name and renamed into place by ``commit`` (``abort`` drops
    it), so a unit killed mid-write never leaves a truncated file where a finished one is expected."""

    def __init__(self, path: str | os.PathLike[str], schema: Any, compression: str = "zstd"):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression=compression)
        self.rows = 0

    def write(self, table: Any) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> Path:
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def streaming_parquet(path: str | os.PathLike[str]) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` for reading batch by batch in bounded memory.

    ``ParquetFile`` pre-buffers by default, and its batch iterator then reads ahead far more than the
    row group it decodes: streaming one 120 MB partition peaked at 135 MB of RSS against 100 MB without
    (89 vs 93 MB for a tenth of it), so a worker's memory grew with the file it streamed."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False)


def file_version(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(mtime in ns, size) of a file: the key under which a per-process cache may keep what it loaded.
    Ray reuses worker processes across steps and stages, so a cache keyed by path alone would hand a
    later run the tokenizer or cluster model an earlier run wrote at the same path."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size
