"""Synthetic-but-structured token domains for tests and benchmarks.

Each domain is a sparse first-order Markov chain over a shared vocabulary with its own successor
table, so a model must infer the domain from context and domains compete for capacity: exactly
the situation in which the training mixture matters. ``write_target_set`` writes a validation set
drawn from a *known* mixture of the domains, so a mixture search has a planted optimum to find.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from moemix.token_shards import SPLITS, TokenShardWriter, TokensMeta, write_meta

BYTES_PER_TOKEN = 3  # pretend every token spells three UTF-8 bytes, so bpb is well defined


class MarkovDomain:
    def __init__(
        self,
        vocab_size: int,
        eos_id: int,
        seed: int,
        fanout: int = 3,
        concentration: float = 0.6,
        shared: float = 0.0,
        shared_seed: int = 10_000,
    ):
        rng = np.random.default_rng(seed)
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        n_regular = vocab_size - 1  # EOS is not a regular token
        self.succ = np.stack([rng.choice(n_regular, size=fanout, replace=False) for _ in range(n_regular)])
        if shared > 0:
            # a fraction of the successor table is common to all domains: transfer between domains,
            # so dropping one costs less than a cliff and the loss is smooth in the weights
            common_rng = np.random.default_rng(shared_seed)
            common = np.stack(
                [common_rng.choice(n_regular, size=fanout, replace=False) for _ in range(n_regular)]
            )
            rows = common_rng.random(n_regular) < shared
            self.succ[rows] = common[rows]
        p = concentration ** np.arange(fanout)
        self.p = p / p.sum()
        self.start = rng.choice(n_regular, size=8, replace=False)

    def doc(self, rng: np.random.Generator, mean_len: int) -> np.ndarray:
        n = int(rng.integers(mean_len // 2, mean_len * 3 // 2 + 1))
        out = np.empty(n, dtype=np.int64)
        t = int(rng.choice(self.start))
        choices = rng.choice(len(self.p), size=n, p=self.p)
        for i in range(n):
            out[i] = t
            t = int(self.succ[t, choices[i]])
        # regular tokens occupy ids != eos_id
        return np.where(out >= self.eos_id, out + 1, out)


def write_markov_domains(
    tokens_dir: str | os.PathLike[str],
    *,
    n_domains: int = 4,
    vocab_size: int = 96,
    train_tokens: int | Mapping[str, int] = 60_000,
    valid_tokens: int = 4_000,
    mean_doc_len: int = 120,
    seed: int = 0,
    shared: float = 0.0,
    fanout: int = 3,
    concentration: float = 0.6,
) -> list[MarkovDomain]:
    """Write ``d0..d{n-1}`` train/valid shards and meta.json; returns the generating chains."""
    tokens_dir = Path(tokens_dir)
    eos_id = 0
    names = [f"d{i}" for i in range(n_domains)]
    chains = [
        MarkovDomain(vocab_size, eos_id, seed * 1000 + i, fanout, concentration, shared, seed * 1000 + 999)
        for i in range(n_domains)
    ]
    meta = TokensMeta(vocab_size=vocab_size, eos_id=eos_id, dtype="", domains=names)
    for split in SPLITS:
        for s in ("tokens", "docs", "bytes"):
            getattr(meta, s)[split] = {}
    for i, (name, chain) in enumerate(zip(names, chains)):
        budget = {
            "train": train_tokens[name] if isinstance(train_tokens, Mapping) else train_tokens,
            "valid": valid_tokens,
        }
        for split in SPLITS:
            rng = np.random.default_rng([seed, i, SPLITS.index(split)])
            w = TokenShardWriter(tokens_dir, split, name, vocab_size, eos_id)
            while w.n_tokens < budget[split]:
                d = chain.doc(rng, mean_doc_len)
                w.add(d, n_bytes=BYTES_PER_TOKEN * len(d))
            w.close()
            meta.dtype = str(w.dtype)
            meta.tokens[split][name] = w.n_tokens
            meta.docs[split][name] = w.n_docs
            meta.bytes[split][name] = w.n_bytes
    write_meta(tokens_dir, meta)
    return chains


def write_target_set(
    tokens_dir: str | os.PathLike[str],
    chains: list[MarkovDomain],
    mixture: Mapping[str, float],
    *,
    valid_tokens: int = 8_000,
    mean_doc_len: int = 120,
    seed: int = 123,
    name: str = "target",
) -> None:
    """Write a one-domain token set whose valid split mixes documents of ``chains`` by ``mixture``."""
    tokens_dir = Path(tokens_dir)
    vocab_size, eos_id = chains[0].vocab_size, chains[0].eos_id
    keys = [f"d{i}" for i in range(len(chains))]
    p = np.array([mixture.get(k, 0.0) for k in keys], dtype=np.float64)
    p /= p.sum()
    rng = np.random.default_rng(seed)
    meta = TokensMeta(vocab_size=vocab_size, eos_id=eos_id, dtype="", domains=[name])
    for split in SPLITS:
        w = TokenShardWriter(tokens_dir, split, name, vocab_size, eos_id)
        budget = valid_tokens if split == "valid" else 0
        # Apportion documents to sources by running quota so the planted mixture holds exactly
        counts = np.zeros(len(keys))
        while w.n_tokens < budget:
            k = int(np.argmax(p * (counts.sum() + 1) - counts))
            counts[k] += 1
            d = chains[k].doc(rng, mean_doc_len)
            w.add(d, n_bytes=BYTES_PER_TOKEN * len(d))
        w.close()
        meta.dtype = str(w.dtype)
        meta.tokens[split] = {name: w.n_tokens}
        meta.docs[split] = {name: w.n_docs}
        meta.bytes[split] = {name: w.n_bytes}
    write_meta(tokens_dir, meta)
