"""Step 4 of the domains stage: one partition's final documents, tokenized and written by the worker
that holds them: ``tokens/<split>/<domain>/p<part>.bin``, ``text/<split>/<domain>/part-<part>.parquet``
and ``assignments/part-<part>.parquet``. Documents stay in corpus order within each file, so the
outputs depend on the partitions, never on which worker wrote them."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from moemix.domains.assign import CAP_SEED, route_file
from moemix.domains.dedup import dedup_file
from moemix.domains.tokenizer import encode_batch, load_tokenizer, mix64
from moemix.domains.units import (
    AtomicParquetWriter,
    file_version,
    load_done,
    save_done,
    streaming_parquet,
)
from moemix.token_shards import TokenShardWriter

TEXT_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("label", pa.string()), ("text", pa.string())]
)
# Text buffered for tokenization: a batch is cut at batch_size documents or 128K characters, and all the
# (split, domain) buffers of a partition together hold at most 1M, so a worker's memory grows neither
# with the number of domains nor with the corpus. The batch bound matters most: the tokenizer's
# Encoding objects cost ~100 bytes a token. Measured on one 120 MB partition: peak RSS 199 MB with
# 512K / 4M, 175 MB with 128K / 1M, at the same speed (the tokenizer runs one thread per worker).
_MAX_BATCH_CHARS = 128 << 10
_MAX_PENDING_CHARS = 1 << 20
ASSIGN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
    ]
)


@dataclass(frozen=True)
class WriteTask:
    partition: int
    work: str
    out_dir: str
    batch_size: int
    vocab_size: int
    eos_id: int
    domains: frozenset[str]  # the domains kept (small ones dropped)
    # domain -> the largest (cap key, pos) kept under max_docs_per_domain; absent: not capped
    cap_limit: dict[str, tuple[int, int]] = field(default_factory=dict)
    # positions moved from train to valid (a domain whose documents all hashed to train)
    to_valid: frozenset[int] = frozenset()


@dataclass
class WriteSummary:
    # (split, domain) -> [tokens, docs, bytes, token file relative to tokens/]
    shards: dict[tuple[str, str], tuple[int, int, int, str]]
    capped: int  # documents left out by max_docs_per_domain
    dropped: int  # documents of dropped domains


@lru_cache(maxsize=4)
def _load_tokenizer(path: str, version: tuple[int, int]):
    return load_tokenizer(path)


def _tokenizer(path: str):
    """The tokenizer at ``path``, loaded once per process and version of the file."""
    return _load_tokenizer(path, file_version(path))


def part_name(part: int) -> str:
    return f"p{part:05d}"


def write_partition(task: WriteTask) -> WriteSummary:
    out = Path(task.out_dir)
    marker = Path(task.work) / "write" / f"{part_name(task.partition)}.done.pkl"
    done = load_done(marker)
    if done is not None:
        return done
    tok = _tokenizer(str(out / "tokenizer.json"))
    shards: dict[tuple[str, str], TokenShardWriter] = {}
    texts: dict[tuple[str, str], AtomicParquetWriter] = {}
    pending: dict[tuple[str, str], list[tuple[str, str, str | None, str]]] = {}
    pending_chars: dict[tuple[str, str], int] = {}
    assign = AtomicParquetWriter(out / "assignments" / f"part-{task.partition:05d}.parquet", ASSIGN_SCHEMA)
    capped = dropped = 0

    def flush(key: tuple[str, str]) -> None:
        rows = pending.pop(key, [])
        pending_chars.pop(key, None)
        if not rows:
            return
        split, domain = key
        if key not in shards:
            shards[key] = TokenShardWriter(
                out / "tokens", split, domain, task.vocab_size, task.eos_id, part=part_name(task.partition)
            )
            path = out / "text" / split / domain / f"part-{task.partition:05d}.parquet"
            texts[key] = AtomicParquetWriter(path, TEXT_SCHEMA)
        body = [r[3] for r in rows]
        for ids, t in zip(encode_batch(tok, body), body):
            shards[key].add(ids, len(t.encode("utf-8")))
        cols = list(zip(*rows))
        texts[key].write(pa.table({n: list(c) for n, c in zip(TEXT_SCHEMA.names, cols)}, schema=TEXT_SCHEMA))

    try:
        dedup = streaming_parquet(dedup_file(task.work, task.partition)).iter_batches(
            batch_size=task.batch_size, use_threads=False
        )
        route = streaming_parquet(route_file(task.work, task.partition)).iter_batches(
            batch_size=task.batch_size, use_threads=False
        )
        for b, r in zip(dedup, route):
            cols = b.to_pydict()
            doms = r.column(0).to_pylist()
            rows_out: list[tuple] = []
            for i, domain in enumerate(doms):
                if domain is None:  # a near duplicate
                    continue
                if domain not in task.domains:
                    dropped += 1
                    continue
                pos = cols["pos"][i]
                limit = task.cap_limit.get(domain)
                if limit is not None and (mix64(int(cols["split_key"][i]), CAP_SEED), pos) > limit:
                    capped += 1
                    continue
                split = "valid" if pos in task.to_valid else cols["split"][i]
                key = (split, domain)
                doc = (cols["id"][i], cols["source"][i], cols["label"][i], cols["text"][i])
                pending.setdefault(key, []).append(doc)
                pending_chars[key] = pending_chars.get(key, 0) + len(doc[3])
                if len(pending[key]) >= task.batch_size or pending_chars[key] >= _MAX_BATCH_CHARS:
                    flush(key)
                elif sum(pending_chars.values()) > _MAX_PENDING_CHARS:  # many domains, each under a batch
                    flush(max(pending_chars, key=pending_chars.__getitem__))
                rows_out.append((doc[0], doc[1], doc[2], domain, split))
            if rows_out:
                cols_out = list(zip(*rows_out))
                assign.write(
                    pa.table(
                        {n: list(c) for n, c in zip(ASSIGN_SCHEMA.names, cols_out)}, schema=ASSIGN_SCHEMA
                    )
                )
        for key in sorted(pending):
            flush(key)
        summary: dict[tuple[str, str], tuple[int, int, int, str]] = {}
        for key, w in shards.items():
            w.close()
            texts[key].commit()
            summary[key] = (w.n_tokens, w.n_docs, w.n_bytes, w.rel_path)
        if assign.rows == 0:
            assign.write(ASSIGN_SCHEMA.empty_table())
        assign.commit()
    except BaseException:
        for w in shards.values():
            w.abort()
        for t in texts.values():
            t.abort()
        assign.abort()
        raise
    return save_done(marker, WriteSummary(summary, capped, dropped))
