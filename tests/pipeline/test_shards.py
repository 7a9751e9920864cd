from __future__ import annotations

import pickle

import numpy as np
import pytest

from moemix.errors import MoemixError
from moemix.token_shards import DomainTokens, TokenShardWriter, TokensMeta, token_dtype, write_meta


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


def _write_parts(root, parts: list[list[list[int]]], vocab: int = 1000) -> None:
    """Domain 'a' of the train and valid splits written as the given parts (lists of documents)."""
    files: dict = {}
    counts: dict = {"tokens": {}, "docs": {}, "bytes": {}}
    for split in ("train", "valid"):
        rels, n_tok, n_doc = [], 0, 0
        for k, docs in enumerate(parts):
            w = TokenShardWriter(root, split, "a", vocab_size=vocab, eos_id=0, part=f"{k:05d}")
            for d in docs:
                w.add(d, n_bytes=len(d))
            w.close()
            rels.append(w.rel_path)
            n_tok, n_doc = n_tok + w.n_tokens, n_doc + w.n_docs
        files[split] = {"a": rels}
        counts["tokens"][split], counts["docs"][split] = {"a": n_tok}, {"a": n_doc}
        counts["bytes"][split] = {"a": n_tok}
    write_meta(
        root,
        TokensMeta(vocab_size=vocab, eos_id=0, dtype="uint16", domains=["a"], files=files, **counts),
    )


def test_a_domain_in_parts_reads_as_their_concatenation(tmp_path):
    parts = [[[1, 2, 3], [4]], [], [[5, 6, 7, 8]], [[9]]]
    _write_parts(tmp_path, parts)
    toks = DomainTokens(tmp_path).tokens("train", "a")
    flat = np.array([1, 2, 3, 0, 4, 0, 5, 6, 7, 8, 0, 9, 0])
    assert len(toks) == len(flat)
    np.testing.assert_array_equal(np.asarray(toks), flat)
    for start in range(len(flat)):
        for stop in range(start, len(flat) + 2):
            np.testing.assert_array_equal(toks[start:stop], flat[start:stop], err_msg=f"[{start}:{stop}]")
    assert int(toks[-1]) == 0 and int(toks[6]) == 5
    assert (tmp_path / "train" / "a" / "00002.bin").exists()


def test_the_stream_over_parts_matches_the_stream_over_one_file(tmp_path):
    from moemix.training.stream import MixtureStream

    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 999, size=int(rng.integers(5, 60))).tolist() for _ in range(40)]
    _write_parts(tmp_path / "parts", [docs[:7], docs[7:20], docs[20:]])
    _write_parts(tmp_path / "one", [docs])
    streams = [
        MixtureStream(DomainTokens(tmp_path / d), {"a": 1.0}, seq_len=16, batch_size=4, seed=3)
        for d in ("parts", "one")
    ]
    for _ in range(30):
        a, b = (next(s) for s in streams)
        assert torch_equal(a.input_ids, b.input_ids) and torch_equal(a.targets, b.targets)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
