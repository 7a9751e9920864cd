"""The chunked LM-head cross-entropy against ``F.cross_entropy`` over materialised logits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from moemix.moe_model import MoEConfig, MoETransformer
from moemix.moe_model.lm_loss import chunk_rows, linear_cross_entropy

N, D, V = 70, 16, 50


def _inputs(seed: int = 0, ignore_every: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g)
    w = torch.randn(V, D, generator=g) * 0.5
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, t


def _loss_and_grads(fn, h, w, t):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(h, w, t)
    (3.0 * loss).backward()  # a non-unit upstream gradient: the backward must scale by it
    return loss.detach(), h.grad, w.grad


def _unfused(h, w, t):
    return F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)


@pytest.mark.parametrize("rows", [1, 7, 32, N, 1000])  # chunks that divide N, do not, and exceed it
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_loss_and_gradients_match_the_unfused_loss(rows, ignore_every):
    h, w, t = _inputs(ignore_every=ignore_every)
    ref = _loss_and_grads(_unfused, h, w, t)
    got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, rows=rows), h, w, t)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_ignored_rows_get_no_gradient_and_do_not_count():
    h, w, t = _inputs(ignore_every=2)
    _, gh, _ = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, rows=8), h, w, t)
    assert gh[::2].abs().max() == 0 and gh[1::2].abs().max() > 0
    kept = t != -100
    loss = linear_cross_entropy(h, w, t, rows=8)
    torch.testing.assert_close(loss, F.cross_entropy(h[kept] @ w.t(), t[kept]))


def test_no_grad_computes_the_same_loss():
    h, w, t = _inputs(ignore_every=5)
    with torch.no_grad():
        got = linear_cross_entropy(h, w, t, rows=9)
    torch.testing.assert_close(got, _unfused(h, w, t))


def test_bf16_autocast_matches_the_unfused_head_under_autocast():
    h, w, t = _inputs(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(_unfused, h, w, t)
        got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, rows=16), h, w, t)
    assert got[1].dtype == h.dtype and got[2].dtype == w.dtype  # gradients in the inputs' dtypes
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3)


def test_chunk_rows_bound_the_logits_a_chunk_holds():
    assert chunk_rows(2048, "cpu") == 512
    assert chunk_rows(1 << 22, "cpu") == 1  # a vocabulary larger than the budget: one row at a time
    assert chunk_rows(32768, "cuda") * 32768 <= 1 << 25


TINY = MoEConfig(
    vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_expert=16
)


@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_and_grads_equal_the_materialised_logits_path(tie):
    cfg = dataclasses.replace(TINY, tie_embeddings=tie)
    ids = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(4))
    tgt = ids.roll(-1, 1)
    tgt[:, -3:] = -100
    results = []
    for return_logits in (True, False):
        torch.manual_seed(0)
        model = MoETransformer(cfg)
        out = model(ids, tgt, return_logits=return_logits)
        assert (out.logits is None) != return_logits
        out.loss.backward()
        results.append((out.lm_loss.detach(), *(p.grad for p in model.parameters())))
    for r, g in zip(*results):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_training_forward_never_holds_the_whole_logits():
    """The point of the fused loss: no [N, V] tensor is alive at the peak of a training step."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    cfg = dataclasses.replace(TINY, vocab_size=8192)
    ids = torch.randint(0, cfg.vocab_size, (32, 32))  # 1024 rows: 8 chunks of 128
    peaks = {}
    for return_logits in (True, False):
        model = MoETransformer(cfg)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            model(ids, ids, return_logits=return_logits).loss.backward()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
        peaks[return_logits] = peak[_MemRefType.ACT] + peak[_MemRefType.TEMP]
    logits_bytes = ids.numel() * cfg.vocab_size * 4
    assert peaks[True] > 2 * logits_bytes  # the unfused loss holds logits, log-probs and their gradients
    assert peaks[False] < logits_bytes / 2, peaks
