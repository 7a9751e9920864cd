"""Fused / grouped MoE expert kernels.

``moe_ffn(x, topk_idx, topk_weight, w_gate_up, w_down, impl)`` with impl in
``reference`` (per-expert loop, the oracle), ``grouped`` (stable-sort dispatch + grouped GEMM, CPU
and GPU), ``triton`` (fused gather/scatter Triton kernels, GPU or TRITON_INTERPRET=1) and ``auto``
(triton on CUDA when importable, grouped elsewhere). Triton is imported only when used.
"""

from typing import TYPE_CHECKING

from moemix._lazy import lazy_exports

if TYPE_CHECKING:
    from moemix.kernels.api import moe_ffn, resolve_impl, triton_available
    from moemix.kernels.flops import measure_matmul_flops
    from moemix.kernels.impls import IMPLS

_EXPORTS = {
    "IMPLS": "moemix.kernels.impls",
    "measure_matmul_flops": "moemix.kernels.flops",
    "moe_ffn": "moemix.kernels.api",
    "resolve_impl": "moemix.kernels.api",
    "triton_available": "moemix.kernels.api",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = ["IMPLS", "measure_matmul_flops", "moe_ffn", "resolve_impl", "triton_available"]
