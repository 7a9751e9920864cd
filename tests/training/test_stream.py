from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from moemix.errors import MoemixError
from moemix.training.stream import MixtureStream, SeatAllocator, eval_batches, eval_sequences

MIX = {"d0": 0.43, "d1": 0.31, "d2": 0.19, "d3": 0.07}


def _take(stream, n):
    return list(itertools.islice(stream, n))


@pytest.mark.parametrize("seed", range(20))
def test_seat_allocator_tracks_weights_within_one(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(2, 12))
    w = rng.dirichlet(np.full(d, rng.choice([0.1, 0.5, 2.0])))
    if seed % 3 == 0:
        w[0] = 0.0
        w /= w.sum()
    alloc = SeatAllocator(w)
    worst = 0.0
    for n in range(1, 2001):
        alloc.next()
        worst = max(worst, float(np.abs(alloc.counts - w * n).max()))
    assert worst < 1.0
    if seed % 3 == 0:
        assert alloc.counts[0] == 0


def test_batches_have_exact_cumulative_proportions(markov_data):
    s = MixtureStream(markov_data, MIX, batch_size=10, seq_len=32, seed=1)
    w = np.array([MIX[d] for d in s.domains])
    cum = np.zeros(4)
    for t, b in enumerate(_take(s, 60), start=1):
        assert b.input_ids.shape == (10, 32) and b.input_ids.dtype == torch.int64
        cum += np.bincount(b.domain_idx.numpy(), minlength=4)
        assert np.abs(cum - w * 10 * t).max() < 1.0
        # per batch, each domain gets floor or ceil of w*B (up to the carried remainder)
        per = np.bincount(b.domain_idx.numpy(), minlength=4)
        assert np.all(per >= np.floor(w * 10) - 1) and np.all(per <= np.ceil(w * 10) + 1)
    assert s.sequences_per_domain == {d: int(c) for d, c in zip(s.domains, cum)}


def test_targets_are_inputs_shifted_and_come_from_the_right_domain(markov_data):
    s = MixtureStream(markov_data, MIX, batch_size=8, seq_len=16, seed=3)
    b = next(s)
    x, y, dom = b  # unpacks like a tuple
    assert x is b.input_ids and y is b.targets and dom.shape == (8,)
    assert torch.equal(b.input_ids[:, 1:], b.targets[:, :-1])
    for row, d in zip(torch.cat([b.input_ids, b.targets[:, -1:]], 1).numpy(), b.domain_idx.numpy()):
        toks = np.asarray(markov_data.tokens("train", s.domains[d]))
        # the row is a contiguous window of its domain's token file
        hits = np.flatnonzero(toks[: len(toks) - 16] == row[0])
        assert any(np.array_equal(toks[h : h + 17], row) for h in hits)


def test_deterministic_for_seed_and_mixture(markov_data):
    a = _take(MixtureStream(markov_data, MIX, batch_size=6, seq_len=24, seed=7), 15)
    b = _take(MixtureStream(markov_data, MIX, batch_size=6, seq_len=24, seed=7), 15)
    c = _take(MixtureStream(markov_data, MIX, batch_size=6, seq_len=24, seed=8), 15)
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, b))
    assert not all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, c))


def test_zero_weight_domain_never_drawn(markov_data):
    s = MixtureStream(markov_data, {"d0": 0.5, "d2": 0.5}, batch_size=8, seq_len=16, seed=0)
    idx = torch.cat([b.domain_idx for b in _take(s, 20)])
    assert set(idx.tolist()) == {0, 2}


def test_epochs_counted_and_chunks_unique_within_an_epoch(markov_data):
    seq = 32
    s = MixtureStream(markov_data, {"d3": 1.0}, batch_size=4, seq_len=seq, seed=0)
    n_chunks = (markov_data.n_tokens("train", "d3") - 1) // seq
    rows = [r.tobytes() for b in _take(s, 40) for r in b.input_ids.numpy()]
    assert s.epochs_per_domain["d3"] == pytest.approx(160 / n_chunks)
    assert len(set(rows[:n_chunks])) == n_chunks  # no repeats inside the first epoch
    assert s.epochs_per_domain["d0"] == 0.0


def test_epoch_cap_error_names_domain_and_numbers(markov_data):
    avail = markov_data.n_tokens("train", "d3")
    with pytest.raises(MoemixError, match=r"domain 'd3'.*max_epochs 2.*" + str(avail)):
        MixtureStream(markov_data, MIX, batch_size=8, seq_len=32, max_epochs=2, total_tokens=100_000)
    # within the cap: fine
    MixtureStream(markov_data, MIX, batch_size=8, seq_len=32, max_epochs=2, total_tokens=40_000)


def test_bad_mixtures_are_rejected(markov_data):
    with pytest.raises(MoemixError, match="unknown domain 'zz'"):
        MixtureStream(markov_data, {"zz": 1.0}, batch_size=4, seq_len=8)
    with pytest.raises(MoemixError, match="d1"):
        MixtureStream(markov_data, {"d0": 1.0, "d1": -0.1}, batch_size=4, seq_len=8)
    with pytest.raises(MoemixError, match="divisible"):
        MixtureStream(markov_data, MIX, batch_size=5, seq_len=8, world_size=2)


def test_data_parallel_ranks_read_disjoint_chunks_and_cover_the_global_batch(markov_data):
    kw = dict(batch_size=8, seq_len=16, seed=5)
    glob = _take(MixtureStream(markov_data, MIX, **kw), 10)
    ranks = [_take(MixtureStream(markov_data, MIX, rank=r, world_size=2, **kw), 10) for r in range(2)]
    for t in range(10):
        r0, r1 = ranks[0][t].input_ids, ranks[1][t].input_ids
        assert r0.shape == (4, 16)
        # interleaving the two ranks gives back exactly the single-process global batch
        merged = torch.stack([r0, r1], 1).reshape(8, 16)
        assert torch.equal(merged, glob[t].input_ids)
    seen0 = {r.tobytes() for b in ranks[0] for r in b.input_ids.numpy()}
    seen1 = {r.tobytes() for b in ranks[1] for r in b.input_ids.numpy()}
    assert not seen0 & seen1


def test_resume_from_state_dict_continues_identically(markov_data):
    full = _take(MixtureStream(markov_data, MIX, batch_size=6, seq_len=16, seed=2), 30)
    s = MixtureStream(markov_data, MIX, batch_size=6, seq_len=16, seed=2)
    _take(s, 12)
    state = s.state_dict()
    s2 = MixtureStream(markov_data, MIX, batch_size=6, seq_len=16, seed=2)
    s2.load_state_dict(state)
    rest = _take(s2, 18)
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(full[12:], rest))
    other = MixtureStream(markov_data, {"d0": 1.0}, batch_size=6, seq_len=16, seed=2)
    with pytest.raises(MoemixError, match="different mixture"):
        other.load_state_dict(state)


def test_eval_sequences_fixed_capped_and_cover_tail(markov_data):
    n = markov_data.n_tokens("valid", "d1")
    seqs = eval_sequences(markov_data, "d1", seq_len=64, max_tokens=1000)
    assert sum(len(s) - 1 for s in seqs) == 1000
    assert len(seqs[-1]) == 1000 - 15 * 64 + 1
    all_seqs = eval_sequences(markov_data, "d1", seq_len=64, max_tokens=10**9)
    assert sum(len(s) - 1 for s in all_seqs) == n - 1
    batches = list(eval_batches(markov_data, "d1", seq_len=64, max_tokens=1000, batch_size=4))
    assert sum(t.numel() for _, t in batches) == 1000
    again = list(eval_batches(markov_data, "d1", seq_len=64, max_tokens=1000, batch_size=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
