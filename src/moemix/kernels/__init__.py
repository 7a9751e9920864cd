"""Fused / grouped MoE expert kernels.

``moe_ffn(x, topk_idx, topk_weight, w_gate_up, w_down, impl)`` with impl in
``reference`` (per-expert loop, the oracle), ``grouped`` (stable-sort dispatch + grouped GEMM, CPU
and GPU), ``triton`` (fused gather/scatter Triton kernels, GPU or TRITON_INTERPRET=1) and ``auto``
(triton on CUDA when importable, grouped elsewhere). Triton is imported only when used.
"""

from moemix.kernels.api import IMPLS, moe_ffn, resolve_impl, triton_available
from moemix.kernels.flops import measure_matmul_flops

__all__ = ["IMPLS", "measure_matmul_flops", "moe_ffn", "resolve_impl", "triton_available"]
