"""The GPU paths compiled on a real CUDA device (skipped where there is none, as in CI).

Under TRITON_INTERPRET=1 the Triton kernels run with 16-wide tiles and fp32 dots; here they run as
compiled for the GPU (64-wide tiles, bf16 tensor-core dots, masked edges), against the CPU oracle.
"""

from __future__ import annotations

import pytest
import torch
from test_moe_ffn import CASES, NAMES, make_case, run

from moemix.kernels import resolve_impl, triton_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# shapes that cross the compiled tile sizes: rows not a multiple of 64, f and d not multiples of 64
GPU_CASES = {
    **CASES,
    "tile_edges": dict(t=1000, d=160, f=96, e=8, k=2),
    "fine_grained": dict(t=2048, d=128, f=128, e=32, k=4),
}
GPU_IMPLS = ["grouped"] + (["triton"] if triton_available() else [])


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float().cpu() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def test_auto_on_cuda_is_what_the_kernel_figures_chose():
    from moemix.kernels.api import auto_gpu_impl

    assert resolve_impl("auto", "cuda") == (auto_gpu_impl() if triton_available() else "grouped")


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_cuda_fp32_matches_cpu_reference(case, impl):
    args = make_case(**GPU_CASES[case])
    ref = run("reference", *args)
    got = run(impl, *[a.cuda() for a in args])
    for name, r, g in zip(NAMES, ref, got):
        assert g.device.type == "cuda"
        assert _rel(g, r) < 1e-5, f"{case}/{name}"


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("case", ["basic", "tile_edges", "fine_grained"])
def test_cuda_bf16_close_to_fp32_reference(case, impl):
    x, idx, w, w1, w2 = make_case(**GPU_CASES[case])
    ref = run("reference", x, idx, w, w1, w2)
    got = run(impl, x.cuda().bfloat16(), idx.cuda(), w.cuda(), w1.cuda().bfloat16(), w2.cuda().bfloat16())
    for name, r, g in zip(NAMES, ref, got):
        assert _rel(g, r) < 2e-2, f"{case}/{name}"


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_cuda_model_training_step_matches_reference(impl):
    from moemix.moe_model import MoEConfig, MoETransformer

    losses = {}
    for kernel in ("reference", impl):
        torch.manual_seed(0)
        model = MoETransformer(MoEConfig(n_experts=8, top_k=2, d_expert=96, kernel_impl=kernel)).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 4096, (4, 65), generator=torch.Generator().manual_seed(1)).cuda()
        seen = []
        for _ in range(3):
            out = model(ids[:, :-1], ids[:, 1:])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            seen.append(out.loss.item())
        losses[kernel] = seen
    assert losses[impl] == pytest.approx(losses["reference"], rel=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_fused_lm_loss_matches_the_materialised_logits(precision):
    """The chunked LM-head loss on CUDA (its chunk size and bf16 autocast path are CUDA's own) against
    ``F.cross_entropy`` over the whole logits, on a vocabulary large enough for several chunks."""
    import torch.nn.functional as F

    from moemix.moe_model.lm_loss import chunk_rows, linear_cross_entropy

    n, d, v = 4096, 256, 50_000
    assert chunk_rows(v, "cuda") < n  # several chunks
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(n, d, generator=g).cuda()
    w0 = (torch.randn(v, d, generator=g) * 0.05).cuda()
    t = torch.randint(0, v, (n,), generator=g).cuda()
    t[::5] = -100
    results = []
    for fused in (False, True):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if fused:
                loss = linear_cross_entropy(h, w, t)
            else:
                loss = F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    tol = 1e-4 if precision == "fp32" else 2e-2
    for name, r, f in zip(("loss", "grad_h", "grad_w"), *results):
        assert f.dtype == r.dtype, name
        assert _rel(f, r.float().cpu()) < tol, name
