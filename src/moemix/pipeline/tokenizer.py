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
        self.salt = None if seed is None else (seed * 0x9E3779B97F4A7C15 + 1) & _MASK64
        self._heap: list[tuple[int, str]] = []  # (-key, text): a max-heap on key
        self._bytes = 0

    def offer(self, key: int, text: str) -> None:
        if self.salt is not None:
            key = ((key ^ self.salt) * 0xBF58476D1CE4E5B9) & _MASK64
        if self._full() and key >= -self._heap[0][0]:
            return
        text = text[: self.max_chars]
        if self.max_docs is not None and len(self._heap) >= self.max_docs:
            _, dropped = heapq.heapreplace(self._heap, (-key, text))
            self._bytes += len(text) - len(dropped)
        else:
            heapq.heappush(self._heap, (-key, text))
            self._bytes += len(text)
        while self.budget is not None and self._bytes > self.budget and len(self._heap) > 1:
            _, dropped = heapq.heappop(self._heap)
            self._bytes -= len(dropped)

    def _full(self) -> bool:
        if not self._heap:
            return False
        over_budget = self.budget is not None and self._bytes >= self.budget
        return over_budget or (self.max_docs is not None and len(self._heap) >= self.max_docs)

    def texts(self) -> list[str]:
        return [t for _, t in sorted(self._heap, key=lambda kv: -kv[0])]

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
    """Token ids per text (multi-threaded in the Rust library; no special tokens added)."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
