from __future__ import annotations

import pickle

import numpy as np
import pytest

from moemix.errors import MoemixError
from moemix.training.shards import DomainTokens, TokenShardWriter, TokensMeta, token_dtype, write_meta


def _write(tmp_path, vocab=1000):
    counts: dict = {"tokens": {}, "docs": {}, "bytes": {}}
    for split in ("train", "valid"):
        for dom, docs in {"a": [[1, 2, 3], [4]], "b": [[5, 6]]}.items():
            w = TokenShardWriter(tmp_path, split, dom, vocab_size=vocab, eos_id=0)
            for d in docs:
                w.add(d, n_bytes=len(d) * 3)
            w.close()
            for k, v in (("tokens", w.n_tokens), ("docs", w.n_docs), ("bytes", w.n_bytes)):
                counts[k].setdefault(split, {})[dom] = v
    write_meta(
        tmp_path,
        TokensMeta(vocab_size=vocab, eos_id=0, dtype=str(token_dtype(vocab)), domains=["a", "b"], **counts),
    )


def test_round_trip_with_eos_and_counts(tmp_path):
    _write(tmp_path)
    dt = DomainTokens(tmp_path)
    assert dt.domains == ["a", "b"]
    np.testing.assert_array_equal(dt.tokens("train", "a"), [1, 2, 3, 0, 4, 0])
    assert dt.n_tokens("train", "a") == 6 and dt.n_bytes("valid", "b") == 6
    # survives pickling (Ray tasks) without carrying the memmaps
    dt2 = pickle.loads(pickle.dumps(dt))
    np.testing.assert_array_equal(dt2.tokens("valid", "b"), [5, 6, 0])


def test_dtype_by_vocab():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_no_temp_file_left_and_abort(tmp_path):
    w = TokenShardWriter(tmp_path, "train", "x", vocab_size=10, eos_id=9)
    w.add([1], 1)
    w.abort()
    assert not any(tmp_path.rglob("*.bin")) and not any(tmp_path.rglob("*.tmp"))


def test_missing_meta_and_unknown_domain(tmp_path):
    with pytest.raises(MoemixError, match="missing meta.json"):
        DomainTokens(tmp_path)
    _write(tmp_path)
    with pytest.raises(MoemixError, match="unknown domain 'zz'"):
        DomainTokens(tmp_path).tokens("train", "zz")
