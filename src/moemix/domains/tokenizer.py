"""Tokenizer for the domains stage: a small byte-level BPE trained on a corpus sample, or a given one.

Byte-level BPE can encode any string (no unknown tokens), which matters because bits-per-byte
comparisons across domains assume every byte of every document is accounted for.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moemix._io import atomic_path
from moemix.errors import MoemixError

EOS_TOKEN = "<|endoftext|>"


@dataclass
class TokenizerConfig:
    # vocab of the trained BPE; ignored when ``path`` is given
    vocab_size: int = 4096
    # an existing tokenizer.json (e.g. from a HF model) instead of training one
    path: str | None = None
    # how much text (UTF-8 bytes, uniform sample by content hash) the BPE is trained on
    train_sample_bytes: int = 8_000_000
    min_frequency: int = 2
    # documents longer than this are cut for the training sample only (long docs would dominate it)
    sample_doc_chars: int = 16_000

    def validate(self) -> None:
        if self.path is None and not 257 + 1 <= self.vocab_size <= 1 << 20:
            raise ValueError(f"tokenizer.vocab_size must be in [258, 1048576], got {self.vocab_size}")
        if self.train_sample_bytes <= 0:
            raise ValueError("tokenizer.train_sample_bytes must be positive")


_MASK64 = (1 << 64) - 1


def mix64(key: int, seed: int) -> int:
    """A 64-bit key remixed under ``seed``: hash orders drawn under different seeds are independent."""
    salt = (seed * 0x9E3779B97F4A7C15 + 1) & _MASK64
    return ((key ^ salt) * 0xBF58476D1CE4E5B9) & _MASK64


class BottomKSample:
    """Uniform sample of texts: keep the docs with the smallest hashes of a per-document key, up to a
    byte budget (``budget_bytes``) or a number of docs (``max_docs``).

    Hash order is a random permutation fixed by content, so the sample is deterministic, independent
    of input order, and needs only the budget's worth of memory. ``seed`` (None: keys as given) salts
    and remixes the keys, so samples drawn under different seeds differ.
    """

    def __init__(
        self,
        budget_bytes: int | None = None,
        max_chars: int = 16_000,
        *,
        max_docs: int | None = None,
        seed: int | None = None,
    ):
        self.budget = budget_bytes
        self.max_docs = max_docs
        self.max_chars = max_chars
        self.seed = seed
        # (-key, size, item): a max-heap on key; item is the text, or a handle to it (see offer_entry)
        self._heap: list[tuple[int, int, Any]] = []
        self._bytes = 0

    def offer(self, key: int, text: str) -> None:
        text = text[: self.max_chars]
        self.offer_entry(key if self.seed is None else mix64(key, self.seed), len(text), text)

    def offer_row(self, key: int, text: str | int, row: int) -> None:
        """Offer a document by reference, its row in a file: the sample then holds keys and sizes only
        (``moemix.domains.dedup.spill_rows`` reads the chosen texts back), so a worker streaming a
        partition never keeps texts alive among the ones it frees (which fragments the heap)."""
        key = key if self.seed is None else mix64(key, self.seed)
        length = text if isinstance(text, int) else len(text)  # the text, or its length
        self.offer_entry(key, min(length, self.max_chars), row)

    def merge(self, other: BottomKSample) -> None:
        """Offer another sample's entries (same budgets and seed), smallest key first: merging the
        per-partition samples of a corpus in partition order gives one sample, whatever the workers."""
        for key, size, item in other.entries():
            self.offer_entry(key, size, item)

    def offer_entry(self, key: int, size: int, item: Any) -> None:
        """Offer an already remixed key with the size of its text and any item standing for it: the
        stage's driver selects by (key, size) alone and fetches only the chosen texts afterwards."""
        if self._full() and key >= -self._heap[0][0]:
            return
        if self.max_docs is not None and len(self._heap) >= self.max_docs:
            dropped = heapq.heapreplace(self._heap, (-key, size, item))
            self._bytes += size - dropped[1]
        else:
            heapq.heappush(self._heap, (-key, size, item))
            self._bytes += size
        while self.budget is not None and self._bytes > self.budget and len(self._heap) > 1:
            self._bytes -= heapq.heappop(self._heap)[1]

    def _full(self) -> bool:
        if not self._heap:
            return False
        over_budget = self.budget is not None and self._bytes >= self.budget
        return over_budget or (self.max_docs is not None and len(self._heap) >= self.max_docs)

    def entries(self) -> list[tuple[int, int, Any]]:
        """(key, size, item), smallest key first."""
        return [(-k, size, item) for k, size, item in sorted(self._heap, reverse=True)]

    def texts(self) -> list[str]:
        return [item for _, _, item in self.entries()]

    def __len__(self) -> int:
        return len(self._heap)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = False):
    """Byte-level BPE with ``<|endoftext|>`` as special token (id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike[str]):
    from tokenizers import Tokenizer

    p = Path(path)
    if not p.exists():
        raise MoemixError(f"tokenizer file not found: {p}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # the tokenizers library raises bare Exceptions
        raise MoemixError(f"cannot load tokenizer {p}: {str(e).splitlines()[0]}") from None


def eos_id(tok, where: str = "tokenizer") -> int:
    """The end-of-document id: ``<|endoftext|>``, else a common EOS spelling."""
    for name in (EOS_TOKEN, "</s>", "<eos>", "[SEP]"):
        i = tok.token_to_id(name)
        if i is not None:
            return int(i)
    raise MoemixError(f"{where}: no end-of-text token ({EOS_TOKEN!r}, '</s>', '<eos>') in its vocabulary")


def save_tokenizer(tok, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tok.save(str(tmp))


def encode_batch(tok, texts: list[str]) -> list[list[int]]:
    """Token ids per text (multi-threaded in the Rust library; no special tokens added). The fast
    variant skips character offsets: the same ids, less memory per batch."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]
