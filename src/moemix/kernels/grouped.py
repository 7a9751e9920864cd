"""Dropless grouped MoE FFN: stable-sort dispatch + grouped GEMMs, with a hand-written backward.

Two row layouts share one forward/backward:
- *jagged* (MegaBlocks/torchtitan): the (token, slot) rows sorted by expert, one contiguous range per
  expert, multiplied with ``torch._grouped_mm`` or a per-expert ``mm`` loop (``grouped_gemm.py``);
- *capacity* (CPU only): each expert's rows placed in a [E, C] slab, C = the largest expert load
  of its chunk (below), so every grouped GEMM of a chunk is ONE ``bmm``. Still dropless - C is the
  max load, nothing is cut - and
  padding rows carry gate weight 0, so their gradients are exactly zero. On a shared 2-core box one
  big parallel region beats E small ones by 3-6x in wall time (each OpenMP region pays a barrier that
  a descheduled thread stretches), so it is used with >1 intra-op thread while the padding waste is
  small (padded rows <= 1.25 N); skewed loads and single-threaded runs use the jagged layout.
  ``MOEMIX_GMM_BACKEND`` forces one (``torch`` | ``loop`` | ``capacity``).

On CPU the experts are processed in *chunks* of whole experts sized so that one chunk's buffers
(gathered rows, gate/up, SwiGLU output, their gradients: ``_row_bytes``) stay in the last-level
cache: the elementwise passes between two GEMMs then read what the GEMM just wrote from cache
instead of memory. Measured on the fine-grained shape (2 cores, 41 interleaved repeats): 2-4% off
the whole fwd+bwd in bf16 and fp32 - small, since the GEMMs dominate - and the backward's scratch
(upstream rows, their SwiGLU gradient) shrinks from layer size to chunk size. On CUDA there is one
chunk (more launches would only cost).

Generic autograd over the unfused ops makes extra elementwise passes (SwiGLU backward as five
separate ops, a ``cat`` of gate/up gradients, the gate weight applied on both branches). On CPU
those passes cost as much as the GEMMs, so this Function
- keeps the unweighted expert output ``y``: d(topk_weight) is one row-dot ``<dL/dout[tok], y>`` and
  the gate weight is applied once, to the upstream gradient, before both backward GEMMs;
- writes the SwiGLU backward straight into the two halves of one [R, 2f] buffer (``silu_backward``
  into the gate half, ``da * silu(g)`` into the up half) that the next GEMMs read as is;
- keeps the gathered input rows and silu(gate) (memory ≈ R·(2d + 4f) floats per layer) instead of
  recomputing them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from moemix.kernels.dispatch import make_dispatch
from moemix.kernels.grouped_gemm import backend, gmm, gmm_wgrad

CAPACITY_MAX_WASTE = 1.25
# Working set one CPU chunk aims for: under the 32 MiB L3 of the machines we measured on, leaving
# room for weights and other tenants (fine shape: 8-16 MiB chunks were best, whole-layer ~45 MiB worst).
# MOEMIX_CHUNK_MIB overrides it (0 = one chunk), for machines with other caches.
CHUNK_BYTES = 12 << 20
# A bmm over a single expert parallelises worse across threads (coarse shape: one-expert chunks 10% slower)
MIN_CAPACITY_CHUNK_EXPERTS = 2


@dataclass(frozen=True)
class _Chunk:
    """Experts [e0, e1) and the rows [r0, r1) of the expert buffers they own."""

    e0: int
    e1: int
    r0: int
    r1: int
    capacity: int = 0  # padded layout: rows per expert slab in this chunk (its largest load)

    @property
    def rows(self) -> slice:
        return slice(self.r0, self.r1)


@dataclass
class _Rows:
    """Where every row of the expert buffers comes from and goes to."""

    token: Tensor  # [R] source token of each row (padding rows point at token 0)
    inv: Tensor  # [T*k] row holding each (token, slot) of the flattened routing
    weight: Tensor  # [R] gate weight (0 on padding rows)
    offsets: Tensor  # [E] int32 jagged group ends (unused for capacity)
    counts: list[int]
    capacity: int  # 0 = jagged layout; else the largest expert load (padded slabs)
    chunks: list[_Chunk]  # consecutive expert groups processed one after another

    @property
    def n_rows(self) -> int:
        return self.token.numel()

    def _sub_offsets(self, c: _Chunk) -> Tensor:
        if c.e0 == 0 and c.e1 == len(self.counts):
            return self.offsets
        return torch.from_numpy(np.cumsum(self.counts[c.e0 : c.e1]).astype(np.int32)).to(self.offsets.device)

    def mm(self, a: Tensor, w: Tensor, c: _Chunk, out: Tensor) -> Tensor:
        """``out[rows of e] = a[rows of e] @ w[e]`` for the experts of chunk ``c`` (a, out: its rows)."""
        if self.capacity:
            g = c.e1 - c.e0
            if c.capacity:
                torch.bmm(a.view(g, c.capacity, -1), w[c.e0 : c.e1], out=out.view(g, c.capacity, -1))
            return out
        return gmm(a, w[c.e0 : c.e1], self._sub_offsets(c), self.counts[c.e0 : c.e1], out=out)

    def wgrad(self, a: Tensor, g: Tensor, c: _Chunk, out: Tensor) -> Tensor:
        """``out[e] = a[rows of e]^T @ g[rows of e]`` for the experts of chunk ``c``."""
        if self.capacity:
            n, cap = c.e1 - c.e0, c.capacity
            if not cap:  # a chunk of experts without tokens
                return out.zero_()
            return torch.bmm(a.view(n, cap, -1).transpose(1, 2), g.view(n, cap, -1), out=out)
        return gmm_wgrad(a, g, self._sub_offsets(c), self.counts[c.e0 : c.e1], out=out)


def _chunk_bytes() -> int:
    value = os.environ.get("MOEMIX_CHUNK_MIB")
    if value is None:
        return CHUNK_BYTES
    try:
        return int(float(value) * (1 << 20))
    except ValueError:
        raise ValueError(
            f"MOEMIX_CHUNK_MIB must be a number of MiB (0 = no chunking), got {value!r}"
        ) from None


def _row_bytes(d: int, f: int, dtype: torch.dtype) -> int:
    """Bytes a row touches through forward + backward: xs, h, sg, a, y, gy, da, dh, dxs."""
    return (4 * d + 7 * f) * torch.empty((), dtype=dtype).element_size()


def _padded_chunks(counts: np.ndarray, row_bytes: int) -> list[_Chunk]:
    """Groups of experts for the padded layout; each pads only to the largest load in its group.

    Benchmark routing (near-even loads): padding rows fine shape 5.0% -> 3.3% (bf16, 4-expert
    chunks) / 1.7% (fp32, 2-expert chunks), coarse 3.9% -> 0.9%, against one layer-wide capacity.
    """
    n_exp, budget = len(counts), _chunk_bytes()
    cap = int(counts.max()) if n_exp else 0
    per = n_exp if budget <= 0 else max(MIN_CAPACITY_CHUNK_EXPERTS, budget // max(row_bytes * cap, 1))
    out, r0 = [], 0
    for e0 in range(0, n_exp, per):
        e1 = min(e0 + per, n_exp)
        c = int(counts[e0:e1].max())
        out.append(_Chunk(e0, e1, r0, r0 + (e1 - e0) * c, c))
        r0 = out[-1].r1
    return out


def _jagged_chunks(counts: np.ndarray, row_bytes: int) -> list[_Chunk]:
    """Consecutive experts whose rows fill about the chunk budget (at least one expert each)."""
    n_exp, budget = len(counts), _chunk_bytes()
    if budget <= 0 or n_exp == 0:
        return [_Chunk(0, n_exp, 0, int(counts.sum()))]
    out, e0, r0, rows = [], 0, 0, 0
    for e, n in enumerate(counts.tolist()):
        rows += n
        if rows * row_bytes >= budget or e == n_exp - 1:
            out.append(_Chunk(e0, e + 1, r0, r0 + rows))
            e0, r0, rows = e + 1, r0 + rows, 0
    return out


def _use_capacity(device: torch.device, padded_rows: int, n: int) -> bool:
    mode = backend()
    if mode == "capacity":
        return n > 0
    return (
        mode == "auto"
        and device.type == "cpu"
        and torch.get_num_threads() > 1  # single-threaded, the mm loop is faster (no barriers to pay)
        and 0 < padded_rows <= CAPACITY_MAX_WASTE * n
    )


def _plan_rows(
    topk_idx: Tensor, topk_weight: Tensor, n_experts: int, dtype: torch.dtype, row_bytes: int = 0
) -> _Rows:
    """Row layout and chunks; ``row_bytes`` (see ``_row_bytes``) sizes the CPU chunks, 0 = one chunk."""
    if topk_idx.device.type == "cpu":
        return _plan_rows_cpu(topk_idx, topk_weight, n_experts, dtype, row_bytes)
    plan = make_dispatch(topk_idx, n_experts)
    counts = plan.counts.tolist()
    inv = torch.empty_like(plan.order)
    inv[plan.order] = torch.arange(plan.order.numel(), device=plan.order.device)
    w_sorted = topk_weight.reshape(-1)[plan.order].to(dtype)
    whole = [_Chunk(0, n_experts, 0, plan.order.numel())]  # on a GPU more launches would only cost
    return _Rows(plan.token, inv, w_sorted, plan.offsets, counts, 0, whole)


def _plan_rows_cpu(
    topk_idx: Tensor, topk_weight: Tensor, n_experts: int, dtype: torch.dtype, row_bytes: int
) -> _Rows:
    """The same plan built with numpy: these are O(T*k) integer ops, and single-threaded numpy avoids
    the OpenMP regions torch would open for each of them (costly on a busy box)."""
    k = topk_idx.shape[1]
    flat = topk_idx.reshape(-1).numpy()
    n = flat.size
    counts = np.bincount(flat, minlength=n_experts)
    if counts.size > n_experts:
        raise ValueError(f"topk_idx holds expert id >= n_experts={n_experts}")
    keys = flat.astype(np.int16) if n_experts <= np.iinfo(np.int16).max else flat
    order = np.argsort(keys, kind="stable")  # radix sort for int16 keys
    ends = np.cumsum(counts)
    token = order // k
    order_t = torch.from_numpy(order)
    w_sorted = topk_weight.reshape(-1)[order_t].to(dtype)
    offsets = torch.from_numpy(ends.astype(np.int32))
    inv = np.empty(n, dtype=np.int64)
    padded = _padded_chunks(counts, row_bytes)
    n_padded = padded[-1].r1 if padded else 0
    if not _use_capacity(topk_idx.device, n_padded, n):
        inv[order] = np.arange(n)
        chunks = _jagged_chunks(counts, row_bytes)
        return _Rows(
            torch.from_numpy(token), torch.from_numpy(inv), w_sorted, offsets, counts.tolist(), 0, chunks
        )
    slab_start = np.empty(n_experts, dtype=np.int64)  # first row of each expert's slab
    for c in padded:
        slab_start[c.e0 : c.e1] = c.r0 + np.arange(c.e1 - c.e0) * c.capacity
    expert_of_row = flat[order]
    slot = slab_start[expert_of_row] + (
        np.arange(n) - (ends - counts)[expert_of_row]
    )  # slab + rank inside it
    inv[order] = slot
    token_pad = np.zeros(n_padded, dtype=np.int64)
    token_pad[slot] = token
    weight = w_sorted.new_zeros(n_padded).index_copy_(0, torch.from_numpy(slot), w_sorted)
    cap = int(counts.max())
    return _Rows(
        torch.from_numpy(token_pad), torch.from_numpy(inv), weight, offsets, counts.tolist(), cap, padded
    )


def _sum_rows(src: Tensor, inv_by_slot: Tensor, weight: Tensor | None = None) -> Tensor:
    """``out[t] = Σ_j weight[t, j] · src[inv_by_slot[j, t]]``: k row gathers and fused multiply-adds.

    On CPU this is 1.2-3x faster than gathering [T, k, d] and reducing it with a [1, k] @ [k, d] bmm
    or ``.sum(1)``, and ``index_add_`` (the scatter form) runs serially.
    """
    out = src.index_select(0, inv_by_slot[0])
    if weight is not None:
        out.mul_(weight[:, :1])
    for j in range(1, inv_by_slot.shape[0]):
        rows_j = src.index_select(0, inv_by_slot[j])
        if weight is None:
            out.add_(rows_j)
        else:
            out.addcmul_(rows_j, weight[:, j : j + 1])
    return out


class _GroupedMoEFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w_gate_up, w_down):  # type: ignore[override]
        f = w_down.shape[1]
        d = x.shape[1]
        rows = _plan_rows(topk_idx, topk_weight, w_gate_up.shape[0], x.dtype, _row_bytes(d, f, x.dtype))
        r = rows.n_rows
        xs, h, sg, a, y = (x.new_empty(r, n) for n in (d, 2 * f, f, f, d))
        for c in rows.chunks:
            s = c.rows
            torch.index_select(x, 0, rows.token[s], out=xs[s])
            rows.mm(xs[s], w_gate_up, c, out=h[s])
            torch.ops.aten.silu.out(h[s, :f], out=sg[s])  # kept for backward: saves a recompute pass
            torch.mul(sg[s], h[s, f:], out=a[s])
            rows.mm(a[s], w_down, c, out=y[s])
        k = topk_idx.shape[1]
        t = x.shape[0]
        inv_by_slot = rows.inv.view(t, k).t().contiguous()  # [k, T]: the row of each token's j-th slot
        out = _sum_rows(y, inv_by_slot, topk_weight.to(x.dtype))
        ctx.save_for_backward(xs, w_gate_up, w_down, h, sg, a, y)
        ctx.rows = rows
        ctx.inv_by_slot = inv_by_slot
        ctx.k = k
        ctx.weight_dtype = topk_weight.dtype
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        xs, w_gate_up, w_down, h, sg, a, y = ctx.saved_tensors
        rows: _Rows = ctx.rows
        f = w_down.shape[1]
        t, d = ctx.x_shape
        need_x, _, need_w, need_gu, need_down = ctx.needs_input_grad
        need_dh = need_x or need_gu
        grad_out = grad_out.contiguous()
        width = max(c.r1 - c.r0 for c in rows.chunks)
        gy_buf = grad_out.new_empty(width, d)
        da_buf = grad_out.new_empty(width, f) if need_dh else None
        dh_buf = grad_out.new_empty(width, 2 * f) if need_dh else None
        dots = grad_out.new_empty(rows.n_rows) if need_w else None
        dw_down = torch.empty_like(w_down) if need_down else None
        dw_gate_up = torch.empty_like(w_gate_up) if need_gu else None
        dxs = xs.new_empty(rows.n_rows, d) if need_x else None
        w_down_t, w_gate_up_t = w_down.transpose(1, 2), w_gate_up.transpose(1, 2)
        for c in rows.chunks:
            s, n = c.rows, c.r1 - c.r0
            gy = torch.index_select(grad_out, 0, rows.token[s], out=gy_buf[:n])  # upstream grad of each row
            if need_w:
                # in x's dtype, as autograd through the unfused ops would give (bf16: summed in fp32,
                # rounded once; converting to fp32 first cost more than the whole dot)
                torch.linalg.vecdot(gy, y[s], out=dots[s])
            gy.mul_(rows.weight[s, None])  # zero on padding rows: their gradients vanish below
            if need_down:
                rows.wgrad(a[s], gy, c, out=dw_down[c.e0 : c.e1])
            if not need_dh:
                continue
            da = rows.mm(gy, w_down_t, c, out=da_buf[:n])
            dh = dh_buf[:n]
            torch.mul(da, sg[s], out=dh[:, f:])
            torch.ops.aten.silu_backward.grad_input(da.mul_(h[s, f:]), h[s, :f], grad_input=dh[:, :f])
            if need_gu:
                rows.wgrad(xs[s], dh, c, out=dw_gate_up[c.e0 : c.e1])
            if need_x:
                rows.mm(dh, w_gate_up_t, c, out=dxs[s])
        d_weight = dots[rows.inv].view(t, ctx.k).to(ctx.weight_dtype) if need_w else None
        dx = None
        if need_x:
            dx = _sum_rows(dxs, ctx.inv_by_slot)
        return dx, None, d_weight, dw_gate_up, dw_down


def moe_ffn_grouped(
    x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> Tensor:
    return _GroupedMoEFFN.apply(x, topk_idx, topk_weight, w_gate_up, w_down)
