"""Dropless grouped MoE FFN: stable-sort dispatch + grouped GEMMs, with a hand-written backward.

Generic autograd over the unfused ops makes extra elementwise passes (SwiGLU backward as five
separate ops, a ``cat`` of the gate/up gradients, the gate-weight product on both branches). On CPU
those passes cost as much as the GEMMs, so this Function:
- keeps the unweighted expert output ``y`` so d(topk_weight) is one row-dot ``<dL/dout[tok], y>``
  and the gate weight is applied once to the upstream gradient before both backward GEMMs;
- writes the SwiGLU backward straight into the two halves of one [N, 2f] buffer (``silu_backward``
  into the gate half, ``da * silu(g)`` into the up half), so the second grouped GEMM reads it as is;
- keeps the gathered input rows, trading memory (≈ N·(2d + 3f) floats per layer) for a re-gather.
The saved tensors are all contiguous, the layout ``torch._grouped_mm`` wants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moemix.kernels.dispatch import make_dispatch
from moemix.kernels.grouped_gemm import gmm, gmm_wgrad


class _GroupedMoEFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_idx, topk_weight, w_gate_up, w_down):  # type: ignore[override]
        n_experts = w_gate_up.shape[0]
        f = w_down.shape[1]
        plan = make_dispatch(topk_idx, n_experts)
        counts = plan.counts.tolist()
        w_sorted = topk_weight.reshape(-1)[plan.order].to(x.dtype)
        xs = x[plan.token]
        h = gmm(xs, w_gate_up, plan.offsets, counts)
        a = F.silu(h[:, :f]).mul_(h[:, f:])
        y = gmm(a, w_down, plan.offsets, counts)
        out = torch.zeros_like(x).index_add_(0, plan.token, y * w_sorted[:, None])
        ctx.save_for_backward(xs, w_gate_up, w_down, h, a, y, w_sorted, plan.order, plan.token, plan.offsets)
        ctx.counts = counts
        ctx.k = topk_idx.shape[1]
        ctx.weight_dtype = topk_weight.dtype
        ctx.x_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        xs, w_gate_up, w_down, h, a, y, w_sorted, order, token, offsets = ctx.saved_tensors
        counts = ctx.counts
        f = w_down.shape[1]
        gy = grad_out.contiguous()[token]  # [N, d] upstream grad of each routed row
        d_weight = None
        if ctx.needs_input_grad[2]:
            acc = torch.float64 if gy.dtype == torch.float64 else torch.float32
            flat = torch.empty(order.numel(), dtype=acc, device=order.device)
            lowp = gy.dtype in (torch.bfloat16, torch.float16)  # reduce over d in fp32
            flat[order] = torch.linalg.vecdot(gy.float(), y.float()) if lowp else torch.linalg.vecdot(gy, y)
            d_weight = flat.view(-1, ctx.k).to(ctx.weight_dtype)
        gy.mul_(w_sorted[:, None])  # gradient w.r.t. the unweighted rows' contribution
        dw_down = gmm_wgrad(a, gy, offsets, counts) if ctx.needs_input_grad[4] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
            return None, None, d_weight, None, dw_down
        da = gmm(gy, w_down.transpose(1, 2), offsets, counts)
        del gy
        g, u = h[:, :f], h[:, f:]
        dh = torch.empty_like(h)
        torch.mul(da, F.silu(g), out=dh[:, f:])
        torch.ops.aten.silu_backward.grad_input(da.mul_(u), g, grad_input=dh[:, :f])
        del da
        dw_gate_up = gmm_wgrad(xs, dh, offsets, counts) if ctx.needs_input_grad[3] else None
        dx = None
        if ctx.needs_input_grad[0]:
            dxs = gmm(dh, w_gate_up.transpose(1, 2), offsets, counts)
            dx = dxs.new_zeros(ctx.x_shape).index_add_(0, token, dxs)
        return dx, None, d_weight, dw_gate_up, dw_down


def moe_ffn_grouped(
    x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> Tensor:
    return _GroupedMoEFFN.apply(x, topk_idx, topk_weight, w_gate_up, w_down)
