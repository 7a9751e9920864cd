"""Mixture-weighted token stream over memory-mapped domain shards.

Why not sample domains i.i.d. per sequence: a proxy sees only a few hundred batches, and the
sampling noise of an i.i.d. draw (±sqrt(w·n) sequences) is large enough to blur the very
mixture differences the swarm is trying to measure. So sequences are *apportioned*:

* Every global sequence slot ("seat") goes to one domain, chosen by Tijdeman's earliest-deadline
  rule among domains still under their quota. This keeps the cumulative count of every domain
  within one sequence of ``w·n`` after *every* seat (hence after every batch), not merely in
  expectation, and never allots a zero-weight domain.
* Each domain is cut into chunks of ``seq_len + 1`` tokens (stride ``seq_len``, so no token is
  skipped between neighbouring chunks); an epoch is one pass over the domain's chunks in a seeded
  shuffled order, with a seeded per-epoch offset so chunk boundaries move between epochs.
  Running past the last chunk starts a new epoch, which is counted.
* Data-parallel ranks share the same global schedule and take seats ``rank::world_size`` of each
  global batch, so ranks read disjoint chunks and the *global* batch keeps exact proportions.

The stream state is just the seat counter and per-domain counts, so checkpoints are tiny and a
resumed stream yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np
import torch

from moemix.errors import MoemixError
from moemix.token_shards import DomainTokens, ShardedTokens

# Above this many chunks a full permutation costs too much memory per epoch; an affine
# permutation i -> (a*i + b) mod n (a coprime to n) still spreads neighbouring draws apart.
_MAX_DENSE_PERMUTATION = 1 << 22


def normalize_mixture(mixture: Mapping[str, float], domains: list[str]) -> np.ndarray:
    """Weights aligned with ``domains`` (missing domains get 0), validated and summing to 1."""
    unknown = sorted(set(mixture) - set(domains))
    if unknown:
        raise MoemixError(f"mixture names unknown domain {unknown[0]!r}; known: {', '.join(domains)}")
    w = np.array([float(mixture.get(d, 0.0)) for d in domains], dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        bad = domains[int(np.argmax(~np.isfinite(w) | (w < 0)))]
        raise MoemixError(
            f"mixture weight for domain {bad!r} must be a finite number >= 0, got {mixture[bad]!r}"
        )
    total = w.sum()
    if total <= 0:
        raise MoemixError("mixture weights sum to 0; at least one domain needs a positive weight")
    return w / total


class SeatAllocator:
    """Assigns consecutive sequence slots to domains keeping ``|count_d - w_d·n| < 1`` for all n.

    Tijdeman (1980): among domains whose count is still below ``w_d·(n+1)``, pick the one whose
    next sequence is due earliest, i.e. the smallest ``(count_d + 1) / w_d``. Plain "largest
    deficit" greedy and largest-remainder apportionment of cumulative targets both break the
    bound (the latter can even ask for negative counts in a batch).
    """

    def __init__(self, weights: np.ndarray):
        self.w = np.asarray(weights, dtype=np.float64)
        self._w = [float(x) for x in self.w]
        self._active = [d for d, x in enumerate(self._w) if x > 0]
        self._inv_w = {d: 1.0 / self._w[d] for d in self._active}
        self._counts = [0] * len(self._w)
        self.n = 0

    @property
    def counts(self) -> np.ndarray:
        return np.asarray(self._counts, dtype=np.int64)

    def set_state(self, n: int, counts: list[int]) -> None:
        self.n = int(n)
        self._counts = [int(c) for c in counts]

    def next(self) -> int:
        return int(self.take(1)[0])

    def take(self, k: int) -> np.ndarray:
        # plain Python over the (few) active domains: numpy's per-call overhead dominates at this size
        w, c, inv, active = self._w, self._counts, self._inv_w, self._active
        n = self.n
        out = np.empty(k, dtype=np.int64)
        for i in range(k):
            n += 1
            best, best_deadline = -1, float("inf")
            for d in active:
                cd = c[d]
                if cd < w[d] * n + 1e-9:  # still under quota after this seat
                    deadline = (cd + 1) * inv[d]
                    if deadline < best_deadline:
                        best, best_deadline = d, deadline
            if best < 0:  # only reachable through float round-off
                best = min(active, key=lambda d: (c[d] + 1) * inv[d])
            c[best] += 1
            out[i] = best
        self.n = n
        return out


class _DomainCursor:
    """Walks one domain's chunks epoch after epoch in a seeded shuffled order."""

    def __init__(self, tokens: np.ndarray | ShardedTokens, seq_len: int, seed: int, name: str):
        # plain ndarray view of the memmap: slicing a np.memmap subclass costs ~10 us per slice
        # (a domain in several parts stays a ShardedTokens view: np.asarray would read it all into RAM)
        self.tokens = tokens if isinstance(tokens, ShardedTokens) else np.asarray(tokens)
        self.seq_len = seq_len
        self.n_chunks = max(0, (len(tokens) - 1) // seq_len)
        self.slack = (len(tokens) - 1) - self.n_chunks * seq_len if self.n_chunks else 0
        self._seed = [int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))]
        self._epoch = -1
        self._perm: np.ndarray | None = None
        self._affine = (1, 0)
        self._offset = 0
        self.pos = 0  # chunks consumed so far, over all epochs

    def _load_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([*self._seed, epoch])
        self._offset = int(rng.integers(0, self.slack + 1))
        n = self.n_chunks
        if n <= _MAX_DENSE_PERMUTATION:
            self._perm = rng.permutation(n)
        else:
            self._perm = None
            a = int(rng.integers(1, n))
            while math.gcd(a, n) != 1:
                a += 1
            self._affine = (a, int(rng.integers(0, n)))
        self._epoch = epoch

    def chunk(self) -> np.ndarray:
        epoch, i = divmod(self.pos, self.n_chunks)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        if self._perm is not None:
            j = int(self._perm[i])
        else:
            a, b = self._affine
            j = (a * i + b) % self.n_chunks
        self.pos += 1
        start = self._offset + j * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]

    def skip(self, k: int) -> None:
        self.pos += int(k)

    @property
    def epochs(self) -> float:
        return self.pos / self.n_chunks if self.n_chunks else 0.0


class Batch(NamedTuple):
    """``x, y, dom = batch`` or attribute access; ``dom`` feeds per-domain expert-load statistics."""

    input_ids: torch.Tensor  # [B, S] int64
    targets: torch.Tensor  # [B, S] int64
    domain_idx: torch.Tensor  # [B] int64, index into MixtureStream.domains


class MixtureStream:
    """Infinite iterator of :class:`Batch` drawn from ``data``'s train split under ``mixture``.

    ``batch_size`` is the *global* batch in sequences; each rank gets ``batch_size // world_size``.
    ``total_tokens`` (global, optional) enables the up-front epoch-cap check.
    """

    def __init__(
        self,
        data: DomainTokens,
        mixture: Mapping[str, float],
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        max_epochs: float | None = None,
        total_tokens: int | None = None,
    ):
        if batch_size <= 0 or seq_len <= 0:
            raise MoemixError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise MoemixError(f"invalid data-parallel rank {rank} for world_size {world_size}")
        if batch_size % world_size:
            raise MoemixError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
        self.data = data
        self.domains = data.domains
        self.weights = normalize_mixture(mixture, self.domains)
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.split = split
        self.max_epochs = max_epochs
        self.available = {d: data.n_tokens(split, d) for d in self.domains}
        self._cursors = [
            _DomainCursor(data.tokens(split, d), seq_len, seed, d) if w > 0 else None
            for d, w in zip(self.domains, self.weights)
        ]
        for d, w, c in zip(self.domains, self.weights, self._cursors):
            if w > 0 and c is not None and c.n_chunks == 0:
                raise MoemixError(
                    f"domain {d!r} has weight {w:.4f} but only {self.available[d]} {split} tokens, "
                    f"fewer than one sequence of seq_len+1={seq_len + 1}"
                )
        if max_epochs is not None and total_tokens is not None:
            check_epoch_cap(self.domains, self.weights, self.available, total_tokens, max_epochs)
        self._alloc = SeatAllocator(self.weights)
        self.steps = 0

    # ---- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        seats = self._alloc.take(self.batch_size)
        mine = seats[self.rank :: self.world_size]
        rows = np.empty((self.local_batch_size, self.seq_len + 1), dtype=np.int64)
        for slot, d in enumerate(seats):
            cursor = self._cursors[d]
            if slot % self.world_size == self.rank:
                rows[slot // self.world_size] = cursor.chunk()
            else:
                cursor.skip(1)  # another rank reads this chunk
        self.steps += 1
        x = torch.from_numpy(rows)
        return Batch(x[:, :-1], x[:, 1:], torch.from_numpy(mine.copy()))

    # ---- accounting ------------------------------------------------------------------------
    @property
    def sequences_per_domain(self) -> dict[str, int]:
        """Global sequences drawn so far from each domain (over all ranks)."""
        return {d: int(c) for d, c in zip(self.domains, self._alloc.counts)}

    @property
    def epochs_per_domain(self) -> dict[str, float]:
        """Passes over each domain's chunks so far (1.0 = every chunk seen once), all ranks together."""
        return {d: (c.epochs if c is not None else 0.0) for d, c in zip(self.domains, self._cursors)}

    # ---- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "seats": int(self._alloc.n),
            "counts": [int(c) for c in self._alloc.counts],
            "domains": list(self.domains),
            "weights": [float(w) for w in self.weights],
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("domains", "batch_size", "seq_len", "seed"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise MoemixError(
                    f"stream checkpoint does not match this stream: {key} {state[key]!r} != {mine!r}"
                )
        if not np.allclose(state["weights"], self.weights, atol=1e-12):
            raise MoemixError("stream checkpoint was written for a different mixture")
        self.steps = int(state["steps"])
        self._alloc.set_state(state["seats"], state["counts"])
        for c, n in zip(self._cursors, state["counts"]):
            if c is not None:
                c.pos = int(n)


def check_epoch_cap(
    domains: list[str],
    weights: np.ndarray,
    available: Mapping[str, int],
    total_tokens: int,
    max_epochs: float,
) -> None:
    """Refuse a run that would repeat some domain more than ``max_epochs`` times (before training)."""
    for d, w in zip(domains, weights):
        need = float(w) * total_tokens
        # relative slack: samplers project weights exactly onto this boundary
        if w > 0 and need > max_epochs * available[d] * (1 + 1e-9):
            raise MoemixError(
                f"domain {d!r}: weight {w:.4f} x {total_tokens} training tokens = {need:.0f} tokens "
                f"exceeds max_epochs {max_epochs:g} x {available[d]} available tokens "
                f"({need / max(available[d], 1):.2f} epochs); lower its weight, the token budget, or raise "
                "max_epochs"
            )


def eval_sequences(
    data: DomainTokens, domain: str, *, seq_len: int, max_tokens: int, split: str = "valid"
) -> list[np.ndarray]:
    """Fixed evaluation sequences: consecutive windows of ``seq_len+1`` tokens from the start.

    Deterministic by construction (no seed), capped at ``max_tokens`` predicted tokens; the last
    window may be shorter so small validation splits are still used in full.
    """
    toks = data.tokens(split, domain)
    n_pred = min(max(len(toks) - 1, 0), max_tokens)
    out = []
    for start in range(0, n_pred, seq_len):
        length = min(seq_len, n_pred - start)
        if length <= 0:
            break
        out.append(np.asarray(toks[start : start + length + 1], dtype=np.int64))
    return out


def eval_batches(
    data: DomainTokens,
    domain: str,
    *,
    seq_len: int,
    max_tokens: int,
    batch_size: int,
    split: str = "valid",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (input_ids, targets) of the fixed evaluation sequences; a short tail gets its own batch."""
    seqs = eval_sequences(data, domain, seq_len=seq_len, max_tokens=max_tokens, split=split)
    full = [s for s in seqs if len(s) == seq_len + 1]
    tail = [s for s in seqs if len(s) != seq_len + 1]
    for i in range(0, len(full), batch_size):
        x = torch.from_numpy(np.stack(full[i : i + batch_size]))
        yield x[:, :-1], x[:, 1:]
    for s in tail:
        x = torch.from_numpy(s[None, :])
        yield x[:, :-1], x[:, 1:]
