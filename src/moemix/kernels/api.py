"""``moe_ffn``: the single functional entry point for the expert computation."""

from __future__ import annotations

import importlib.util
import sys

import torch
from torch import Tensor

from moemix.kernels.impls import IMPLS

# Compiled on an NVIDIA H200 (torch 2.11, Triton 3.6; 2026-12-04) the Triton kernels pass
# tests/kernels/test_cuda.py: fp32 and bf16 tensor-core dots, tile edges, fine-grained experts and a
# training step, against the CPU oracle. They are correct but not the fastest there: the cluster
# preset's expert layer (T 16384, d 2048, f 1024, 64 experts, top-8) takes 26.0 ms forward+backward
# against torch._grouped_mm's 15.2 ms (the reference loop: 94.8 ms; docs/benchmarks/kernels.md). So
# ``auto`` means grouped_mm on CUDA too, and ``kernel_impl: triton`` selects the Triton kernels.
TRITON_VERIFIED_ON_GPU = True
TRITON_FASTER_ON_GPU = False


def auto_gpu_impl() -> str:
    """What ``auto`` means on CUDA when Triton is installed: Triton only if verified there and faster."""
    return "triton" if TRITON_VERIFIED_ON_GPU and TRITON_FASTER_ON_GPU else "grouped"


def triton_available() -> bool:
    """True when triton can be imported (checked without importing it)."""
    if "triton" in sys.modules:  # already imported, or blocked with sys.modules["triton"] = None
        return sys.modules["triton"] is not None
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, device_type: str) -> str:
    """Map ``auto`` to a concrete implementation for ``device_type``."""
    if impl not in IMPLS:
        raise ValueError(f"kernel impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "auto":
        return auto_gpu_impl() if device_type == "cuda" and triton_available() else "grouped"
    return impl


def moe_ffn(
    x: Tensor,
    topk_idx: Tensor,
    topk_weight: Tensor,
    w_gate_up: Tensor,
    w_down: Tensor,
    impl: str = "auto",
) -> Tensor:
    """Dropless SwiGLU expert mixture: ``out[t] = Σ_j w[t,j] · down_e(silu(gate_e x) · up_e x)``.

    x [T, d]; topk_idx [T, k] int64; topk_weight [T, k]; w_gate_up [E, d, 2f] (gate columns first,
    then up); w_down [E, f, d]. Returns [T, d] in x's dtype. Differentiable in x, topk_weight and
    both weights for every impl.
    """
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        # the hand-written backward runs outside autocast: fix one dtype now, then compute without it
        dt = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return moe_ffn(x.to(dt), topk_idx, topk_weight, w_gate_up.to(dt), w_down.to(dt), impl=impl)
    _check(x, topk_idx, topk_weight, w_gate_up, w_down)
    name = resolve_impl(impl, dev)
    if name == "reference":
        from moemix.kernels.reference import moe_ffn_reference

        return moe_ffn_reference(x, topk_idx, topk_weight, w_gate_up, w_down)
    if name == "grouped":
        from moemix.kernels.grouped import moe_ffn_grouped

        return moe_ffn_grouped(x, topk_idx, topk_weight, w_gate_up, w_down)
    from moemix.kernels.triton_moe import moe_ffn_triton  # imports triton lazily

    return moe_ffn_triton(x, topk_idx, topk_weight, w_gate_up, w_down)


def _check(x: Tensor, topk_idx: Tensor, topk_weight: Tensor, w_gate_up: Tensor, w_down: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [T, d], got {tuple(x.shape)}")
    t, d = x.shape
    if topk_idx.shape != topk_weight.shape or topk_idx.dim() != 2 or topk_idx.shape[0] != t:
        raise ValueError(
            f"topk_idx {tuple(topk_idx.shape)} and topk_weight {tuple(topk_weight.shape)} must both be "
            f"[T={t}, k]"
        )
    if w_gate_up.dim() != 3 or w_gate_up.shape[1] != d or w_gate_up.shape[2] % 2:
        raise ValueError(f"w_gate_up must be [E, d={d}, 2f], got {tuple(w_gate_up.shape)}")
    if not (x.dtype == w_gate_up.dtype == w_down.dtype):
        raise ValueError(
            f"x, w_gate_up, w_down must share a dtype, got {x.dtype}, {w_gate_up.dtype}, {w_down.dtype}"
        )
    e, _, two_f = w_gate_up.shape
    if tuple(w_down.shape) != (e, two_f // 2, d):
        raise ValueError(f"w_down must be [E={e}, f={two_f // 2}, d={d}], got {tuple(w_down.shape)}")
