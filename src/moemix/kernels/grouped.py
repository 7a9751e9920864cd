"""Dropless grouped MoE FFN: stable-sort dispatch + grouped GEMMs, with a hand-written backward.

Two row layouts share one forward/backward:
- *jagged* (MegaBlocks/torchtitan): the (token, slot) rows sorted by expert, one contiguous range per
  expert, multiplied with ``torch._grouped_mm`` or a per-expert ``mm`` loop (``grouped_gemm.py``);
- *capacity* (CPU only): each expert's rows placed in a [E, C] slab, C = the largest expert load,
  so every grouped GEMM is ONE ``bmm``. Still dropless - C is the max load, nothing is cut - and
  padding rows carry gate weight 0, so their gradients are exactly zero. On a shared 2-core box one
  big parallel region beats E small ones by 3-6x in wall time (each OpenMP region pays a barrier that
  a descheduled thread stretches), so it is used with >1 intra-op thread while the padding waste is
  small (E * C <= 1.25 N); skewed loads and single-threaded runs use the jagged layout. ``MOEMIX_GMM_BACKEND`` forces one
  (``torch`` | ``loop`` | ``capacity``).

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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from moemix.kernels.dispatch import make_dispatch
from moemix.kernels.grouped_gemm import backend, gmm, gmm_wgrad

CAPACITY_MAX_WASTE = 1.25


@dataclass
class _Rows:
    """Where every row of the expert buffers comes from and goes to."""

    token: Tensor  # [R] source token of each row (padding rows point at token 0)
    inv: Tensor  # [T*k] row holding each (token, slot) of the flattened routing
    weight: Tensor  # [R] gate weight (0 on padding rows)
    offsets: Tensor  # [E] int32 jagged group ends (unused for capacity)
    counts: list[int]
    capacity: int  # 0 = jagged layout

    def mm(self, a: Tensor, w: Tensor) -> Tensor:
        """Row-wise ``a[rows of e] @ w[e]``."""
        if self.capacity:
            e = w.shape[0]
            return torch.bmm(a.view(e, self.capacity, -1), w).view(a.shape[0], -1)
        return gmm(a, w, self.offsets, self.counts)

    def wgrad(self, a: Tensor, g: Tensor) -> Tensor:
        """Per-expert ``a[rows of e]^T @ g[rows of e]``."""
        if self.capacity:
            e, c = len(self.counts), self.capacity
            return torch.bmm(a.view(e, c, -1).transpose(1, 2), g.view(e, c, -1))
        return gmm_wgrad(a, g, self.offsets, self.counts)


def _use_capacity(device: torch.device, n_experts: int, cap: int, n: int) -> bool:
    mode = backend()
    if mode == "capacity":
        return cap > 0
    return (
        mode == "auto"
        and device.type == "cpu"
        and torch.get_num_threads() > 1  # single-threaded, the mm loop is faster (no barriers to pay)
        and 0 < n_experts * cap <= CAPACITY_MAX_WASTE * n
    )


def _plan_rows(topk_idx: Tensor, topk_weight: Tensor, n_experts: int, dtype: torch.dtype) -> _Rows:
    if topk_idx.device.type == "cpu":
        return _plan_rows_cpu(topk_idx, topk_weight, n_experts, dtype)
    plan = make_dispatch(topk_idx, n_experts)
    counts = plan.counts.tolist()
    inv = torch.empty_like(plan.order)
    inv[plan.order] = torch.arange(plan.order.numel(), device=plan.order.device)
    w_sorted = topk_weight.reshape(-1)[plan.order].to(dtype)
    return _Rows(plan.token, inv, w_sorted, plan.offsets, counts, 0)


def _plan_rows_cpu(topk_idx: Tensor, topk_weight: Tensor, n_experts: int, dtype: torch.dtype) -> _Rows:
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
    cap = int(counts.max()) if n else 0
    inv = np.empty(n, dtype=np.int64)
    if not _use_capacity(topk_idx.device, n_experts, cap, n):
        inv[order] = np.arange(n)
        return _Rows(torch.from_numpy(token), torch.from_numpy(inv), w_sorted, offsets, counts.tolist(), 0)
    expert_of_row = flat[order]
    slot = expert_of_row * cap + (np.arange(n) - (ends - counts)[expert_of_row])  # slab + rank inside it
    inv[order] = slot
    token_pad = np.zeros(n_experts * cap, dtype=np.int64)
    token_pad[slot] = token
    weight = w_sorted.new_zeros(n_experts * cap).index_copy_(0, torch.from_numpy(slot), w_sorted)
    return _Rows(torch.from_numpy(token_pad), torch.from_numpy(inv), weight, offsets, counts.tolist(), cap)


class _GroupedMoEFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w_gate_up, w_down):  # type: ignore[override]
        f = w_down.shape[1]
        rows = _plan_rows(topk_idx, topk_weight, w_gate_up.shape[0], x.dtype)
        xs = x.index_select(0, rows.token)
        h = rows.mm(xs, w_gate_up)
        sg = F.silu(h[:, :f])  # kept for backward: saves one recompute pass over [R, f]
        a = sg * h[:, f:]
        y = rows.mm(a, w_down)
        # combine the k rows of each token: one gather + a [1, k] @ [k, d] bmm per token, which also
        # applies the gate weights (cheaper than weighting + index_add_, which is serial on CPU)
        k = topk_idx.shape[1]
        t = x.shape[0]
        rows_of_token = y.index_select(0, rows.inv).view(t, k, y.shape[1])
        out = torch.bmm(topk_weight.to(x.dtype).view(t, 1, k), rows_of_token).squeeze(1)
        ctx.save_for_backward(xs, w_gate_up, w_down, h, sg, a, y)
        ctx.rows = rows
        ctx.k = topk_idx.shape[1]
        ctx.weight_dtype = topk_weight.dtype
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        xs, w_gate_up, w_down, h, sg, a, y = ctx.saved_tensors
        rows: _Rows = ctx.rows
        f = w_down.shape[1]
        gy = grad_out.contiguous().index_select(0, rows.token)  # [R, d] upstream grad of each row
        d_weight = None
        if ctx.needs_input_grad[2]:
            lowp = gy.dtype in (torch.bfloat16, torch.float16)  # reduce over d in fp32
            dots = torch.linalg.vecdot(gy.float(), y.float()) if lowp else torch.linalg.vecdot(gy, y)
            d_weight = dots[rows.inv].view(ctx.x_shape[0], ctx.k).to(ctx.weight_dtype)
        gy.mul_(rows.weight[:, None])  # zero on padding rows: their gradients vanish below
        dw_down = rows.wgrad(a, gy) if ctx.needs_input_grad[4] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
            return None, None, d_weight, None, dw_down
        da = rows.mm(gy, w_down.transpose(1, 2))
        del gy
        g, u = h[:, :f], h[:, f:]
        dh = torch.empty_like(h)
        torch.mul(da, sg, out=dh[:, f:])
        torch.ops.aten.silu_backward.grad_input(da.mul_(u), g, grad_input=dh[:, :f])
        del da
        dw_gate_up = rows.wgrad(xs, dh) if ctx.needs_input_grad[3] else None
        dx = None
        if ctx.needs_input_grad[0]:
            dxs = rows.mm(dh, w_gate_up.transpose(1, 2))
            # sum the k rows of each token; a [1, k] @ [k, d] bmm is ~2x faster than .sum(1) on CPU
            ones = dxs.new_ones(ctx.x_shape[0], 1, ctx.k)
            dx = torch.bmm(ones, dxs.index_select(0, rows.inv).view(ctx.x_shape[0], ctx.k, dxs.shape[1])).squeeze(1)
        return dx, None, d_weight, dw_gate_up, dw_down


def moe_ffn_grouped(
    x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> Tensor:
    return _GroupedMoEFFN.apply(x, topk_idx, topk_weight, w_gate_up, w_down)
