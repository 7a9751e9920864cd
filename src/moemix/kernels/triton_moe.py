"""Triton MoE FFN (ScatterMoE-style): gathers and scatters fused into the grouped GEMMs.

Rows are the expert-sorted (token, slot) pairs of ``dispatch.make_dispatch``; a block table maps
each program's row tile to one expert, so no padded activation copy is ever made:

forward   ``_gate_up_kernel``  h = x[token] @ W1[e] (gather fused into the A loads), a = silu(g) * u
          ``_row_gemm_kernel`` y = a @ W2[e]; stores y (for backward) and w * y scattered straight to
                               its (token, slot) row; the k slots of a token are then summed.
backward  ``_swiglu_bwd_kernel`` da = w * (dout[token] @ W2[e]^T) with the SwiGLU backward in the
                               epilogue -> dh [N, 2f]; program column 0 also forms d(topk_weight) =
                               <dout[token], y>, scattered to its (token, slot).
          ``_wgrad_kernel``    dW[e] = A_e^T @ B_e over the expert's rows (gathers/scales fused)
          ``_row_gemm_kernel`` dx rows = dh @ W1[e]^T scattered to (token, slot), then summed.

Accumulation is fp32. Under ``TRITON_INTERPRET=1`` (CPU tests) bf16 ``tl.dot`` is unreliable, so
tiles are cast to fp32 before every dot whenever we interpret or the inputs are fp32 (the latter
also disables TF32 so fp32 results match the reference).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from moemix.kernels.dispatch import make_dispatch


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The kernels below repeat their block prologue (expert, row range, masks) on purpose: as a jit helper it
# would return eight values whose masks and dtypes the compiler must thread through, and these kernels
# have so far been checked only in the CPU interpreter; fold it once a GPU run (scripts/gpu_check.sh)
# can show the compiled code is unchanged.


@triton.jit
def _dot(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _gate_up_kernel(
    X,
    TOKEN,
    W,
    BLK_E,
    BLK_START,
    BLK_END,
    H,
    A,
    D,
    F,
    s_x,
    s_we,
    s_wk,
    s_wn,
    s_h,
    s_a,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLK_E + pid_m).to(tl.int64)
    start = tl.load(BLK_START + pid_m)
    end = tl.load(BLK_END + pid_m)
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    tok = tl.load(TOKEN + rows, mask=rmask, other=0).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < F
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    w_base = W + e * s_we
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < D
        x = tl.load(X + tok[:, None] * s_x + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & cmask[None, :]
        wg = tl.load(w_base + ks[:, None] * s_wk + cols[None, :] * s_wn, mask=wmask, other=0.0)
        wu = tl.load(w_base + ks[:, None] * s_wk + (cols[None, :] + F) * s_wn, mask=wmask, other=0.0)
        acc_g = _dot(x, wg, acc_g, DOT_F32)
        acc_u = _dot(x, wu, acc_u, DOT_F32)
    a = acc_g * tl.sigmoid(acc_g) * acc_u
    omask = rmask[:, None] & cmask[None, :]
    r64 = rows.to(tl.int64)
    tl.store(H + r64[:, None] * s_h + cols[None, :], acc_g.to(H.dtype.element_ty), mask=omask)
    tl.store(H + r64[:, None] * s_h + (cols[None, :] + F), acc_u.to(H.dtype.element_ty), mask=omask)
    tl.store(A + r64[:, None] * s_a + cols[None, :], a.to(A.dtype.element_ty), mask=omask)


@triton.jit
def _row_gemm_kernel(
    A,
    W,
    BLK_E,
    BLK_START,
    BLK_END,
    SCALE,
    ORDER,
    Y,
    Y2,
    K,
    N,
    s_a,
    s_we,
    s_wk,
    s_wn,
    s_y,
    s_y2,
    HAS_SCALE: tl.constexpr,
    STORE_Y2: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """acc = A[rows] @ W[e]; optionally Y2[rows] = acc; Y[ORDER[rows]] = acc (* SCALE[rows])."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLK_E + pid_m).to(tl.int64)
    start = tl.load(BLK_START + pid_m)
    end = tl.load(BLK_END + pid_m)
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    r64 = rows.to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    w_base = W + e * s_we
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < K
        a = tl.load(A + r64[:, None] * s_a + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(
            w_base + ks[:, None] * s_wk + cols[None, :] * s_wn,
            mask=kmask[:, None] & cmask[None, :],
            other=0.0,
        )
        acc = _dot(a, w, acc, DOT_F32)
    omask = rmask[:, None] & cmask[None, :]
    if STORE_Y2:
        tl.store(Y2 + r64[:, None] * s_y2 + cols[None, :], acc.to(Y2.dtype.element_ty), mask=omask)
    if HAS_SCALE:
        acc = acc * tl.load(SCALE + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    dest = tl.load(ORDER + rows, mask=rmask, other=0).to(tl.int64)
    tl.store(Y + dest[:, None] * s_y + cols[None, :], acc.to(Y.dtype.element_ty), mask=omask)


@triton.jit
def _swiglu_bwd_kernel(
    GO,
    TOKEN,
    W2,
    BLK_E,
    BLK_START,
    BLK_END,
    SCALE,
    H,
    Y,
    ORDER,
    DH,
    DWS,
    D,
    F,
    s_go,
    s_we,
    s_wf,
    s_wd,
    s_h,
    s_y,
    s_dh,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLK_E + pid_m).to(tl.int64)
    start = tl.load(BLK_START + pid_m)
    end = tl.load(BLK_END + pid_m)
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    r64 = rows.to(tl.int64)
    tok = tl.load(TOKEN + rows, mask=rmask, other=0).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < F
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    w_base = W2 + e * s_we
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < D
        go = tl.load(GO + tok[:, None] * s_go + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        # element (j, c) = W2[e, c, j]: the transpose is just a stride swap
        w = tl.load(
            w_base + cols[None, :] * s_wf + ks[:, None] * s_wd,
            mask=kmask[:, None] & cmask[None, :],
            other=0.0,
        )
        acc = _dot(go, w, acc, DOT_F32)
    scale = tl.load(SCALE + rows, mask=rmask, other=0.0).to(tl.float32)
    da = acc * scale[:, None]
    omask = rmask[:, None] & cmask[None, :]
    g = tl.load(H + r64[:, None] * s_h + cols[None, :], mask=omask, other=0.0).to(tl.float32)
    u = tl.load(H + r64[:, None] * s_h + (cols[None, :] + F), mask=omask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    dg = da * u * (sig * (1.0 + g * (1.0 - sig)))
    du = da * g * sig
    tl.store(DH + r64[:, None] * s_dh + cols[None, :], dg.to(DH.dtype.element_ty), mask=omask)
    tl.store(DH + r64[:, None] * s_dh + (cols[None, :] + F), du.to(DH.dtype.element_ty), mask=omask)
    if pid_n == 0:
        # d topk_weight[row] = <dout[token], y[row]> (y = unweighted expert output)
        dws = tl.zeros((BM,), dtype=tl.float32)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            m2 = rmask[:, None] & (ks[None, :] < D)
            go = tl.load(GO + tok[:, None] * s_go + ks[None, :], mask=m2, other=0.0).to(tl.float32)
            y = tl.load(Y + r64[:, None] * s_y + ks[None, :], mask=m2, other=0.0).to(tl.float32)
            dws += tl.sum(go * y, axis=1)
        dest = tl.load(ORDER + rows, mask=rmask, other=0).to(tl.int64)
        tl.store(DWS + dest, dws, mask=rmask)


@triton.jit
def _wgrad_kernel(
    A,
    A_IDX,
    B,
    B_IDX,
    SCALE,
    STARTS,
    ENDS,
    OUT,
    M,
    N,
    s_a,
    s_b,
    s_oe,
    s_om,
    GATHER_A: tl.constexpr,
    GATHER_B: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """OUT[e] = A[rows_e]^T @ (SCALE * B[rows_e]); rows optionally gathered through A_IDX / B_IDX."""
    e = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    start = tl.load(STARTS + e)
    end = tl.load(ENDS + e)
    mcols = pid_m * BM + tl.arange(0, BM)
    ncols = pid_n * BN + tl.arange(0, BN)
    mmask = mcols < M
    nmask = ncols < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for r0 in range(start, end, BK):
        rows = r0 + tl.arange(0, BK)
        rmask = rows < end
        if GATHER_A:
            ra = tl.load(A_IDX + rows, mask=rmask, other=0).to(tl.int64)
        else:
            ra = rows.to(tl.int64)
        if GATHER_B:
            rb = tl.load(B_IDX + rows, mask=rmask, other=0).to(tl.int64)
        else:
            rb = rows.to(tl.int64)
        at = tl.load(A + ra[None, :] * s_a + mcols[:, None], mask=mmask[:, None] & rmask[None, :], other=0.0)
        b = tl.load(B + rb[:, None] * s_b + ncols[None, :], mask=rmask[:, None] & nmask[None, :], other=0.0)
        if HAS_SCALE:
            # scale in fp32 (bf16 elementwise math is unreliable in the interpreter), back to B's dtype
            scale = tl.load(SCALE + rows, mask=rmask, other=0.0).to(tl.float32)
            b = (b.to(tl.float32) * scale[:, None]).to(B.dtype.element_ty)
        acc = _dot(at, b, acc, DOT_F32)
    e64 = e.to(tl.int64)
    tl.store(
        OUT + e64 * s_oe + mcols[:, None] * s_om + ncols[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=mmask[:, None] & nmask[None, :],
    )


def _blocks(counts: Tensor, offsets: Tensor, bm: int, n_rows: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Row-tile table: expert, first row and end row of every BM-row tile (no tile spans two experts).

    Sized by the upper bound ceil(N/BM) + E so no device->host sync is needed; surplus tiles get an
    empty row range and do nothing.
    """
    n_exp = counts.numel()
    per = (counts + bm - 1) // bm
    cum = torch.cumsum(per, 0)
    n_blocks = (n_rows + bm - 1) // bm + n_exp
    b = torch.arange(n_blocks, device=counts.device)
    expert = torch.searchsorted(cum, b, right=True).clamp_max(n_exp - 1)
    first_blk = cum - per
    ends = offsets.to(torch.int64)
    starts = ends - counts
    row_start = starts[expert] + (b - first_blk[expert]) * bm
    valid = b < cum[-1]
    row_end = torch.where(valid, ends[expert], row_start)
    return expert.to(torch.int32), row_start.to(torch.int32), row_end.to(torch.int32), n_blocks


def _cfg(dtype: torch.dtype) -> dict:
    interp = _interpreting()
    dot_f32 = interp or dtype == torch.float32
    if interp:
        return dict(BM=16, BN=16, BK=16, DOT_F32=True)
    return dict(BM=64, BN=64, BK=32, DOT_F32=dot_f32)


class _TritonMoEFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w_gate_up, w_down):  # type: ignore[override]
        x = x.contiguous()
        t, d = x.shape
        k = topk_idx.shape[1]
        n_exp, _, two_f = w_gate_up.shape
        f = two_f // 2
        n = t * k
        plan = make_dispatch(topk_idx, n_exp)
        token = plan.token.to(torch.int32)
        order = plan.order.to(torch.int32)
        w_sorted = topk_weight.reshape(-1)[plan.order].float().contiguous()
        c = _cfg(x.dtype)
        blk_e, blk_s, blk_end, nb = _blocks(plan.counts, plan.offsets, c["BM"], n)
        h = x.new_empty(n, two_f)
        a = x.new_empty(n, f)
        _gate_up_kernel[(nb, triton.cdiv(f, c["BN"]))](
            x,
            token,
            w_gate_up,
            blk_e,
            blk_s,
            blk_end,
            h,
            a,
            d,
            f,
            x.stride(0),
            *w_gate_up.stride(),
            h.stride(0),
            a.stride(0),
            **c,
        )
        y = x.new_empty(n, d)
        scattered = x.new_empty(n, d)
        _row_gemm_kernel[(nb, triton.cdiv(d, c["BN"]))](
            a,
            w_down,
            blk_e,
            blk_s,
            blk_end,
            w_sorted,
            order,
            scattered,
            y,
            f,
            d,
            a.stride(0),
            *w_down.stride(),
            scattered.stride(0),
            y.stride(0),
            HAS_SCALE=True,
            STORE_Y2=True,
            **c,
        )
        out = scattered.view(t, k, d).sum(1)
        ctx.save_for_backward(
            x,
            w_gate_up,
            w_down,
            h,
            a,
            y,
            w_sorted,
            token,
            order,
            plan.counts,
            plan.offsets,
            blk_e,
            blk_s,
            blk_end,
        )
        ctx.meta = (t, k, d, f, n_exp, nb, topk_weight.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x, w_gate_up, w_down, h, a, y, w_sorted, token, order, counts, offsets, blk_e, blk_s, blk_end) = (
            ctx.saved_tensors
        )
        t, k, d, f, n_exp, nb, wdtype = ctx.meta
        n = t * k
        go = grad_out.contiguous()
        c = _cfg(x.dtype)
        dh = x.new_empty(n, 2 * f)
        dws = torch.zeros(n, dtype=torch.float32, device=x.device)
        _swiglu_bwd_kernel[(nb, triton.cdiv(f, c["BN"]))](
            go,
            token,
            w_down,
            blk_e,
            blk_s,
            blk_end,
            w_sorted,
            h,
            y,
            order,
            dh,
            dws,
            d,
            f,
            go.stride(0),
            *w_down.stride(),
            h.stride(0),
            y.stride(0),
            dh.stride(0),
            **c,
        )
        ends = offsets.to(torch.int32)
        starts = (offsets.to(torch.int64) - counts).to(torch.int32)
        wc = dict(c)
        dw_down = torch.empty_like(w_down)
        # dW_down[e] = a_e^T @ (w * dout[token])_e
        _wgrad_kernel[(n_exp, triton.cdiv(f, wc["BM"]), triton.cdiv(d, wc["BN"]))](
            a,
            token,
            go,
            token,
            w_sorted,
            starts,
            ends,
            dw_down,
            f,
            d,
            a.stride(0),
            go.stride(0),
            dw_down.stride(0),
            dw_down.stride(1),
            GATHER_A=False,
            GATHER_B=True,
            HAS_SCALE=True,
            **wc,
        )
        dw_gate_up = torch.empty_like(w_gate_up)
        # dW_gate_up[e] = x[token]_e^T @ dh_e
        _wgrad_kernel[(n_exp, triton.cdiv(d, wc["BM"]), triton.cdiv(2 * f, wc["BN"]))](
            x,
            token,
            dh,
            token,
            w_sorted,
            starts,
            ends,
            dw_gate_up,
            d,
            2 * f,
            x.stride(0),
            dh.stride(0),
            dw_gate_up.stride(0),
            dw_gate_up.stride(1),
            GATHER_A=True,
            GATHER_B=False,
            HAS_SCALE=False,
            **wc,
        )
        dx_rows = x.new_empty(n, d)
        wt = w_gate_up.transpose(1, 2)  # [E, 2f, d] view: the kernel only needs the strides
        _row_gemm_kernel[(nb, triton.cdiv(d, c["BN"]))](
            dh,
            wt,
            blk_e,
            blk_s,
            blk_end,
            w_sorted,
            order,
            dx_rows,
            dx_rows,
            2 * f,
            d,
            dh.stride(0),
            *wt.stride(),
            dx_rows.stride(0),
            dx_rows.stride(0),
            HAS_SCALE=False,
            STORE_Y2=False,
            **c,
        )
        dx = dx_rows.view(t, k, d).sum(1)
        return dx, None, dws.view(t, k).to(wdtype), dw_gate_up, dw_down


def moe_ffn_triton(
    x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> Tensor:
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError("impl='triton' needs a CUDA device (or TRITON_INTERPRET=1 for CPU testing)")
    return _TritonMoEFFN.apply(x, topk_idx, topk_weight, w_gate_up, w_down)
