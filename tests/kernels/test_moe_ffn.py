"""Every CPU implementation of moe_ffn against the per-expert-loop oracle, forward and backward."""

from __future__ import annotations

import pytest
import torch

from moemix.kernels import moe_ffn, resolve_impl
from moemix.kernels.dispatch import make_dispatch


def make_case(t, d, f, e, k, dtype=torch.float32, seed=0, route=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, d, generator=g).to(dtype)
    if route is None:
        idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    else:
        idx = route(t, e, k, g)
    w = torch.rand(t, k, generator=g)
    w1 = (torch.randn(e, d, 2 * f, generator=g) / d**0.5).to(dtype)
    w2 = (torch.randn(e, f, d, generator=g) / f**0.5).to(dtype)
    return x, idx, w, w1, w2


def run(impl, x, idx, w, w1, w2, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, w1, w2)]
    out = moe_ffn(leaves[0], idx, leaves[1], leaves[2], leaves[3], impl=impl)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    out.backward(gout)
    return [out.detach()] + [t.grad for t in leaves]


def skip_expert(t, e, k, g):  # expert 1 never chosen
    idx = torch.stack([torch.randperm(e - 1, generator=g)[:k] for _ in range(t)])
    return torch.where(idx >= 1, idx + 1, idx)


def one_hot_expert(t, e, k, g):  # expert 2 is in every token's top-k
    rest = torch.stack([torch.randperm(e - 1, generator=g)[: k - 1] for _ in range(t)])
    rest = torch.where(rest >= 2, rest + 1, rest)
    return torch.cat([torch.full((t, 1), 2), rest], dim=1)


def idle_pair(t, e, k, g):  # only experts 0, 1, 4, 5 are ever chosen
    used = torch.tensor([0, 1, 4, 5])
    return torch.stack([used[torch.randperm(4, generator=g)[:k]] for _ in range(t)])


CASES = {
    "basic": dict(t=64, d=32, f=16, e=4, k=2),
    "odd_T": dict(t=37, d=24, f=20, e=5, k=2),
    "k1": dict(t=50, d=16, f=8, e=4, k=1),
    "empty_expert": dict(t=40, d=16, f=8, e=6, k=2, route=skip_expert),
    "all_to_one": dict(t=33, d=16, f=8, e=4, k=2, route=one_hot_expert),
    # experts 2 and 3 idle: with two-expert chunks one whole padded chunk has no rows
    "idle_pair": dict(t=30, d=16, f=8, e=6, k=2, route=idle_pair),
    "single_expert_k1": dict(
        t=19, d=8, f=8, e=3, k=1, route=lambda t, e, k, g: torch.zeros(t, 1, dtype=torch.long)
    ),
}
NAMES = ["out", "dx", "dw", "dw_gate_up", "dw_down"]


@pytest.fixture(params=["whole", "chunked"])
def chunking(request, monkeypatch):
    """Run the grouped path as one chunk (small test shapes) or with the smallest chunks it makes
    (one expert per jagged chunk, two per capacity chunk), so chunk seams are covered."""
    if request.param == "chunked":
        monkeypatch.setattr("moemix.kernels.grouped.CHUNK_BYTES", 1)
    return request.param


@pytest.mark.parametrize("backend", ["loop", "torch", "capacity", "auto"])
@pytest.mark.parametrize("case", list(CASES))
def test_grouped_matches_reference_fp32(case, backend, chunking, monkeypatch):
    monkeypatch.setenv("MOEMIX_GMM_BACKEND", backend)
    args = make_case(**CASES[case])
    ref = run("reference", *args)
    got = run("grouped", *args)
    for name, r, g in zip(NAMES, ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_reference_matches_dense_math():
    """The oracle itself against a hand-written dense formula (all experts computed, then masked)."""
    x, idx, w, w1, w2 = make_case(t=11, d=8, f=4, e=3, k=2, dtype=torch.float64)
    f = w2.shape[1]
    h = torch.einsum("td,edh->teh", x, w1)
    y = torch.einsum("tef,efd->ted", torch.nn.functional.silu(h[..., :f]) * h[..., f:], w2)
    dense = sum(w[:, j, None].double() * y[torch.arange(11), idx[:, j]] for j in range(2))
    torch.testing.assert_close(moe_ffn(x, idx, w.double(), w1, w2, impl="reference"), dense)


@pytest.mark.parametrize("backend", ["loop", "torch", "capacity", "auto"])
def test_grouped_bf16_close_to_fp32_reference(backend, chunking, monkeypatch):
    monkeypatch.setenv("MOEMIX_GMM_BACKEND", backend)
    x, idx, w, w1, w2 = make_case(t=96, d=32, f=32, e=4, k=2, route=skip_expert)
    ref = run("reference", x, idx, w, w1, w2)
    got = run("grouped", x.bfloat16(), idx, w, w1.bfloat16(), w2.bfloat16())
    for name, r, g in zip(NAMES, ref, got):
        assert g.dtype == (torch.float32 if name == "dw" else torch.bfloat16), name
        err = (g.float() - r).norm() / r.norm()
        assert err < 2e-2, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("backend", ["loop", "capacity"])
def test_gradcheck_float64(backend, chunking, monkeypatch):
    monkeypatch.setenv("MOEMIX_GMM_BACKEND", backend)
    x, idx, w, w1, w2 = make_case(t=13, d=6, f=4, e=3, k=2, dtype=torch.float64, route=skip_expert)
    leaves = [t.double().requires_grad_() for t in (x, w, w1, w2)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: moe_ffn(a, idx, b, c, d, impl="grouped"), leaves)


def test_auto_layout_choice():
    """CPU auto: one padded bmm slab when multi-threaded and loads are even; else jagged rows."""
    from moemix.kernels.grouped import _plan_rows

    even = torch.arange(64).remainder(4).view(32, 2)
    torch.set_num_threads(2)  # the autouse fixture (tests/conftest.py) restores it
    rows = _plan_rows(even, torch.ones(32, 2), 4, torch.float32)
    assert rows.capacity == 16 and rows.token.numel() == 64
    torch.set_num_threads(1)
    assert _plan_rows(even, torch.ones(32, 2), 4, torch.float32).capacity == 0
    skewed = torch.stack([torch.zeros(32, dtype=torch.long), torch.arange(32).remainder(3) + 1], 1)
    assert _plan_rows(skewed, torch.ones(32, 2), 4, torch.float32).capacity == 0


@pytest.mark.parametrize("backend", ["loop", "capacity"])
def test_chunks_tile_experts_and_rows(backend, monkeypatch):
    """CPU chunks: consecutive, covering every expert and every row once, at the configured size."""
    from moemix.kernels import grouped

    monkeypatch.setenv("MOEMIX_GMM_BACKEND", backend)
    idx = torch.tensor([[0, 1], [1, 3], [0, 3], [3, 1], [1, 0]])  # expert 2 and 4 get nothing
    counts = [3, 4, 0, 3, 0]
    for budget, row_bytes in [(1 << 30, 4), (1, 4), (64, 4)]:
        monkeypatch.setattr(grouped, "CHUNK_BYTES", budget)
        rows = grouped._plan_rows(idx, torch.ones(5, 2), 5, torch.float32, row_bytes)
        assert bool(rows.capacity) == (backend == "capacity")
        chunks = rows.chunks
        assert chunks[0].e0 == 0 and chunks[0].r0 == 0
        assert chunks[-1].e1 == 5 and chunks[-1].r1 == rows.n_rows
        assert all(a.e1 == b.e0 and a.r1 == b.r0 for a, b in zip(chunks, chunks[1:]))
        for c in chunks:
            if rows.capacity:  # each chunk pads to its own largest load, not the layer's
                assert c.capacity == max(counts[c.e0 : c.e1])
                assert c.r1 - c.r0 == (c.e1 - c.e0) * c.capacity
            else:
                assert c.r1 - c.r0 == sum(counts[c.e0 : c.e1])
        if budget == 1 << 30:
            assert len(chunks) == 1
        if budget == 1:  # smallest chunks: one loaded expert (jagged) or two slabs (capacity)
            sizes = [c.e1 - c.e0 for c in chunks]
            assert sizes == ([2, 2, 1] if rows.capacity else [1, 1, 2, 1])
            if rows.capacity:  # the last chunk holds only expert 4, which has no tokens
                assert rows.n_rows == 2 * 4 + 2 * 3 + 0
        # every (token, slot) lands on a row of its own expert, holding that token
        flat = idx.reshape(-1)
        for c in chunks:
            for e in range(c.e0, c.e1):
                mine = (flat == e).nonzero().squeeze(1)
                r = rows.inv[mine]
                lo = c.r0 + ((e - c.e0) * c.capacity if rows.capacity else sum(counts[c.e0 : e]))
                assert bool(((r >= lo) & (r < lo + counts[e])).all())
                assert rows.token[r].tolist() == (mine // 2).tolist()


def test_dispatch_is_stable_and_counts():
    idx = torch.tensor([[2, 0], [0, 2], [1, 2]])
    plan = make_dispatch(idx, 4)
    assert plan.counts.tolist() == [2, 1, 3, 0]
    assert plan.offsets.tolist() == [2, 3, 6, 6]
    assert plan.token.tolist() == [0, 1, 2, 0, 1, 2]  # ascending token id inside each expert


@pytest.mark.parametrize("backend", ["loop", "capacity"])
def test_grouped_empty_batch(backend, monkeypatch):
    monkeypatch.setenv("MOEMIX_GMM_BACKEND", backend)
    x, idx, w, w1, w2 = make_case(
        t=0, d=8, f=4, e=3, k=2, route=lambda t, e, k, g: torch.zeros(0, k, dtype=torch.long)
    )
    out, dx, dw, dw1, dw2 = run("grouped", x, idx, w, w1, w2)
    assert out.shape == (0, 8) and dx.shape == (0, 8) and dw.shape == (0, 2)
    assert dw1.abs().sum() == 0 and dw2.abs().sum() == 0


def test_auto_and_validation():
    assert resolve_impl("auto", "cpu") == "grouped"
    with pytest.raises(ValueError, match="kernel impl"):
        resolve_impl("fast", "cpu")
    x, idx, w, w1, w2 = make_case(t=4, d=8, f=4, e=2, k=1)
    with pytest.raises(ValueError, match="w_down"):
        moe_ffn(x, idx, w, w1, w2[:, :2])


def test_no_triton_import_on_package_import():
    import subprocess
    import sys

    code = (
        "import sys, moemix.kernels, moemix.moe_model; assert 'triton' not in sys.modules, 'triton imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # with triton absent altogether, auto still works (grouped) and the model trains a step
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch; from moemix.moe_model import MoEConfig, MoETransformer\n"
        "m = MoETransformer(MoEConfig(vocab_size=32, d_model=16, n_heads=2, d_expert=16))\n"
        "ids = torch.randint(0, 32, (2, 8)); m(ids, ids).loss.backward(); print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm missing")
def test_torch_grouped_mm_cpu_forward_backward():
    """What the grouped path relies on: torch._grouped_mm on CPU, fwd + autograd bwd, incl. an empty group.

    (Its own backward rejects stride-0 grads such as ``y.sum().backward()``'s - one reason the
    grouped impl has its own Function that hands it contiguous gradients.)
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=g, requires_grad=True)
    w = torch.randn(3, 8, 12, generator=g, requires_grad=True)
    offs = torch.tensor([4, 4, 10], dtype=torch.int32)
    y = torch._grouped_mm(x, w, offs=offs)
    gout = torch.randn(10, 12, generator=g)
    y.backward(gout)
    ref = torch.cat([x[:4] @ w[0], x[4:] @ w[2]])
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(x.grad, torch.cat([gout[:4] @ w[0].T, gout[4:] @ w[2].T]))
    torch.testing.assert_close(w.grad[1], torch.zeros(8, 12))
    torch.testing.assert_close(w.grad[2], x[4:].T @ gout[4:])
