"""On-disk format of tokenized domains: the contract between the domains stage and training.

Layout under a domains directory::

    tokens/meta.json                        vocab size, EOS id, dtype, domains, counts, and the files
    tokens/<split>/<domain>/<part>.bin      flat little-endian token ids, documents separated by EOS

A domain is the concatenation of its parts in the order ``meta.json`` lists them: the domains stage
writes one part per hash partition, each from the worker that processed it, so no single process
writes a whole domain. ``tokens/<split>/<domain>.bin`` (one file, no ``files`` in the meta) is the
single-part layout that small writers (synthetic domains, hand-made evaluation sets) use.

Raw ``.bin`` files (not ``.npy``) so a writer can stream documents without knowing the final
length; readers memory-map them, so a proxy never loads a whole domain into RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moemix._io import write_json_atomic
from moemix.errors import MoemixError

SPLITS = ("train", "valid")
META_NAME = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class TokenShardWriter:
    """Appends tokenized documents of one (split, domain[, part]) to a temp file; ``close`` renames it in
    place. ``rel_path`` is what ``TokensMeta.files`` lists for it."""

    def __init__(
        self,
        tokens_dir: str | os.PathLike[str],
        split: str,
        domain: str,
        vocab_size: int,
        eos_id: int,
        part: str | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.rel_path = f"{split}/{domain}.bin" if part is None else f"{split}/{domain}/{part}.bin"
        self.path = Path(tokens_dir) / self.rel_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - held across add() calls, closed in close()/abort()
        self.dtype = token_dtype(vocab_size)
        self.eos = np.array([eos_id], dtype=self.dtype)
        self.n_tokens = 0
        self.n_docs = 0
        self.n_bytes = 0

    def add(self, ids: Iterable[int] | np.ndarray, n_bytes: int) -> None:
        """Append one document's token ids (EOS is appended here) and its UTF-8 byte count."""
        arr = np.asarray(ids, dtype=self.dtype)
        self._f.write(arr.tobytes())
        self._f.write(self.eos.tobytes())
        self.n_tokens += int(arr.size) + 1
        self.n_docs += 1
        self.n_bytes += int(n_bytes)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


@dataclass
class TokensMeta:
    vocab_size: int
    eos_id: int
    dtype: str
    domains: list[str]
    # split -> domain -> count
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    docs: dict[str, dict[str, int]] = field(default_factory=dict)
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    # split -> domain -> part files relative to tokens/, in reading order; absent: <split>/<domain>.bin
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def parts(self, split: str, domain: str) -> list[str]:
        listed = self.files.get(split, {}).get(domain)
        return list(listed) if listed is not None else [f"{split}/{domain}.bin"]


class ShardedTokens:
    """One domain's tokens spread over several memory-mapped parts, read as if they were one array.

    Supports what readers do: ``len`` and contiguous slices (a window that crosses a part boundary is
    stitched from both parts; every other window is a view into one part, no copy)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.dtype = parts[0].dtype if parts else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: int | slice) -> np.ndarray | np.integer:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("ShardedTokens supports contiguous slices only")
            if stop <= start:
                return np.zeros(0, dtype=self.dtype)
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            j = int(np.searchsorted(self.starts, stop - 1, side="right")) - 1
            if i == j:
                off = int(self.starts[i])
                return self.parts[i][start - off : stop - off]
            pieces = [self.parts[k] for k in range(i, j + 1)]
            pieces[0] = pieces[0][start - int(self.starts[i]) :]
            pieces[-1] = pieces[-1][: stop - int(self.starts[j])]
            return np.concatenate(pieces)
        k = int(key) + n if int(key) < 0 else int(key)
        if not 0 <= k < n:
            raise IndexError(f"index {key} out of range for {n} tokens")
        i = int(np.searchsorted(self.starts, k, side="right")) - 1
        return self.parts[i][k - int(self.starts[i])]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # np.asarray: the whole domain, in RAM
        out = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        return out.astype(dtype) if dtype is not None else out


def write_meta(tokens_dir: str | os.PathLike[str], meta: TokensMeta) -> None:
    write_json_atomic(Path(tokens_dir) / META_NAME, meta)


class DomainTokens:
    """Read-only view of tokenized domains, memory-mapped."""

    def __init__(self, tokens_dir: str | os.PathLike[str]):
        self.dir = Path(tokens_dir)
        meta_path = self.dir / META_NAME
        if not meta_path.exists():
            raise MoemixError(f"no tokenized domains at {self.dir} (missing {META_NAME})")
        raw = json.loads(meta_path.read_text())
        self.meta = TokensMeta(**raw)
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    @property
    def domains(self) -> list[str]:
        return list(self.meta.domains)

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    @property
    def eos_id(self) -> int:
        return self.meta.eos_id

    def n_tokens(self, split: str, domain: str) -> int:
        return int(self.meta.tokens[split][domain])

    def n_bytes(self, split: str, domain: str) -> int:
        return int(self.meta.bytes[split][domain])

    def tokens(self, split: str, domain: str) -> np.ndarray | ShardedTokens:
        """A domain's tokens: the memmap itself when it is one part, else a ``ShardedTokens`` view."""
        key = (split, domain)
        if key not in self._cache:
            if domain not in self.meta.domains:
                raise MoemixError(f"unknown domain {domain!r}; known: {', '.join(self.meta.domains)}")
            parts = [self._open(self.dir / rel) for rel in self.meta.parts(split, domain)]
            if len(parts) == 1:
                self._cache[key] = parts[0]
            else:
                self._cache[key] = ShardedTokens(parts)
        return self._cache[key]

    def _open(self, path: Path) -> np.ndarray:
        if not path.exists():
            raise MoemixError(f"missing token shard {path}")
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=self.meta.dtype)
        return np.memmap(path, dtype=np.dtype(self.meta.dtype), mode="r")

    def __getstate__(self) -> dict:
        # memmaps are re-opened on the other side of a pickle (Ray tasks) instead of copied
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state
