"""Dropless grouped MoE FFN: stable-sort dispatch + grouped GEMMs, with a hand-written backward.

Autograd over the unfused ops would keep every intermediate ([N, d] gathers, [N, 2f], [N, f],
[N, d] outputs) alive and re-materialise transposes; this Function saves only the inputs and the
[N, 2f] pre-activation, recomputes the cheap gather/SwiGLU, and gets d(topk_weight) from
``<dL/d(a @ W_down), a>`` so the unweighted expert output never has to be stored.
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
        a = F.silu(h[:, :f]) * h[:, f:]
        y = gmm(a, w_down, plan.offsets, counts)
        y.mul_(w_sorted[:, None])
        out = torch.zeros_like(x).index_add_(0, plan.token, y)
        ctx.save_for_backward(x, w_gate_up, w_down, h, w_sorted, plan.order, plan.token, plan.offsets)
        ctx.counts = counts
        ctx.k = topk_idx.shape[1]
        ctx.weight_dtype = topk_weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w_gate_up, w_down, h, w_sorted, order, token, offsets = ctx.saved_tensors
        counts = ctx.counts
        f = w_down.shape[1]
        go = grad_out.contiguous()
        gy = go[token]  # [N, d] upstream grad of each routed row (before the gate weight)
        da_u = gmm(gy, w_down.transpose(1, 2), offsets, counts)  # d/da of the unweighted output
        g, u = h[:, :f], h[:, f:]
        sig = torch.sigmoid(g)
        sg = g * sig
        a = sg * u
        d_w_sorted = (da_u.float() * a.float()).sum(-1)
        ws = w_sorted[:, None]
        dw_down = gmm_wgrad(a, gy.mul_(ws), offsets, counts) if ctx.needs_input_grad[4] else None
        da = da_u.mul_(ws)
        dh = torch.cat([da * u * (sig * (1 + g * (1 - sig))), da * sg], dim=-1)
        del da, sig, sg, a
        dw_gate_up = None
        if ctx.needs_input_grad[3]:
            dw_gate_up = gmm_wgrad(x[token], dh, offsets, counts)
        dx = None
        if ctx.needs_input_grad[0]:
            dxs = gmm(dh, w_gate_up.transpose(1, 2), offsets, counts)
            dx = torch.zeros_like(x).index_add_(0, token, dxs)
        d_weight = None
        if ctx.needs_input_grad[2]:
            flat = torch.empty(order.numel(), dtype=torch.float32, device=order.device)
            flat[order] = d_w_sorted
            d_weight = flat.view(-1, ctx.k).to(ctx.weight_dtype)
        return dx, None, d_weight, dw_gate_up, dw_down


def moe_ffn_grouped(
    x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor
) -> Tensor:
    return _GroupedMoEFFN.apply(x, topk_idx, topk_weight, w_gate_up, w_down)
