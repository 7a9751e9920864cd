"""On-disk format of tokenized domains: the contract between the domains stage and training.

Layout under a domains directory::

    tokens/meta.json                 vocab size, EOS id, dtype, domains, token and byte counts
    tokens/<split>/<domain>.bin      flat little-endian token ids, documents separated by EOS

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
    """Appends tokenized documents of one (split, domain) to a temp file; ``close`` renames it in place."""

    def __init__(
        self, tokens_dir: str | os.PathLike[str], split: str, domain: str, vocab_size: int, eos_id: int
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = Path(tokens_dir) / split / f"{domain}.bin"
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

    def tokens(self, split: str, domain: str) -> np.ndarray:
        key = (split, domain)
        if key not in self._cache:
            if domain not in self.meta.domains:
                raise MoemixError(f"unknown domain {domain!r}; known: {', '.join(self.meta.domains)}")
            path = self.dir / split / f"{domain}.bin"
            if not path.exists():
                raise MoemixError(f"missing token shard {path}")
            if path.stat().st_size == 0:
                self._cache[key] = np.zeros(0, dtype=self.meta.dtype)
            else:
                self._cache[key] = np.memmap(path, dtype=np.dtype(self.meta.dtype), mode="r")
        return self._cache[key]

    def __getstate__(self) -> dict:
        # memmaps are re-opened on the other side of a pickle (Ray tasks) instead of copied
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state
