"""MinHash signatures and LSH banding for near-duplicate removal (Broder 1997; the banding of
Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3).

A document's signature is, for each of ``num_perm`` random affine hashes, the minimum over its word
shingles; two documents agree on a signature row with probability equal to their shingle sets'
Jaccard similarity. Rows are cut into ``bands`` bands of ``rows`` rows; documents that agree on a whole
band collide. The band count is chosen so the collision probability ``1 - (1 - s^r)^b`` steps from 0
to 1 near the threshold (equal weight on false positives and negatives).

Plain numpy rather than ``datasketch``: the stage needs band keys it can hash-partition across workers
(datasketch's LSH index lives in one process), and the signature itself is ten lines.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

_PRIME = np.uint64(4294967311)  # smallest prime above 2**32
_MAX_CHARS = 100_000  # shingles of the first 100k characters: near-duplicates show up well before


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, num_perm, 0x4D48])
    # a < 2**31 and shingle hashes < 2**32, so a*h + b stays below 2**64 in uint64
    a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    words = text[:_MAX_CHARS].lower().split()
    if len(words) <= ngram:
        grams = [" ".join(words)]
    else:
        grams = [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    return np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), dtype=np.uint64, count=len(grams))


def signatures(texts: list[str], num_perm: int, ngram: int, seed: int = 0) -> np.ndarray:
    """[len(texts), num_perm] uint32 MinHash signatures."""
    a, b = _permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for i, t in enumerate(texts):
        h = np.unique(shingle_hashes(t, ngram))
        out[i] = ((a[:, None] * h[None, :] + b[:, None]) % _PRIME).min(axis=1).astype(np.uint32)
    return out


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimizing false positives + false negatives."""
    s = np.linspace(0.0, 1.0, 1001)
    best, best_err = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1.0 - (1.0 - s**rows) ** bands
        fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
        fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
        if fp + fn < best_err:
            best, best_err = (bands, rows), fp + fn
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] uint64 keys; equal keys in the same band column mean the band agreed."""
    n = sig.shape[0]
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):  # FNV-style mixing wraps around on purpose
        for j in range(bands):
            k = np.full(n, np.uint64(0xCBF29CE484222325) ^ np.uint64(j), dtype=np.uint64)
            for v in sig[:, j * rows : (j + 1) * rows].T:
                k = (k ^ v.astype(np.uint64)) * np.uint64(0x100000001B3)
            keys[:, j] = k
    return keys
