"""Per-process caches of what a unit loads: Ray reuses worker processes across steps and runs, so a
tokenizer saved anew at the same path must be loaded anew, not served from the cache."""

from __future__ import annotations

import os

from moemix.domains import write
from moemix.domains.tokenizer import save_tokenizer, train_bpe

TEXTS = ["the quick brown fox jumps over the lazy dog " * 20, "pack my box with five dozen liquor jugs " * 20]


def test_a_tokenizer_rewritten_at_the_same_path_is_reloaded(tmp_path):
    path = tmp_path / "tokenizer.json"
    save_tokenizer(train_bpe(TEXTS, vocab_size=270), path)
    first = write._tokenizer(str(path))
    assert write._tokenizer(str(path)) is first  # cached while the file is unchanged
    save_tokenizer(train_bpe(TEXTS, vocab_size=300), path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # however coarse the clock
    second = write._tokenizer(str(path))
    assert second.get_vocab_size() != first.get_vocab_size()
