"""Grouped GEMM primitives over an expert-sorted row buffer.

``torch._grouped_mm`` is used where it exists and accepts the operands (it needs every non-unit
stride to be a multiple of 16 bytes; on CUDA it wants bf16 on sm80+); otherwise a per-expert loop
of ``mm`` calls over contiguous row slices does the same work (no padding, no copies).

On CPU torch 2.13's ``_grouped_mm`` is a generic fallback no faster than the loop, so ``auto`` uses
the loop there (or, in ``grouped.py``, a padded ``bmm`` when loads are even) and ``_grouped_mm`` on
CUDA; ``MOEMIX_GMM_BACKEND=torch|loop|capacity`` forces one. See docs/benchmarks/kernels.md.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

_HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
_broken: set[tuple[str, torch.dtype]] = set()


def backend() -> str:
    value = os.environ.get("MOEMIX_GMM_BACKEND", "auto")
    if value not in ("auto", "torch", "loop", "capacity"):
        raise ValueError(f"MOEMIX_GMM_BACKEND must be auto|torch|loop|capacity, got {value!r}")
    return value


def _aligned(t: Tensor) -> bool:
    item = t.element_size()
    return all(s == 1 or (s * item) % 16 == 0 for s, n in zip(t.stride(), t.shape) if n > 1) and (
        t.data_ptr() % 16 == 0
    )


def _use_torch(*tensors: Tensor) -> bool:
    if not _HAS_GROUPED_MM:
        return False
    mode = backend()
    dev = tensors[0].device.type
    if mode in ("loop", "capacity") or (mode == "auto" and dev != "cuda"):
        return False
    if (dev, tensors[0].dtype) in _broken:
        return False
    if dev == "cuda" and tensors[0].dtype != torch.bfloat16:
        return False
    return all(_aligned(t) for t in tensors)


def _try_torch(fn, key: tuple[str, torch.dtype]):
    try:
        return fn()
    except RuntimeError:
        # an unsupported device/dtype combination: remember and use the loop from now on
        _broken.add(key)
        return None


def gmm(a: Tensor, b: Tensor, offsets: Tensor, counts: list[int], out: Tensor | None = None) -> Tensor:
    """``out[rows of e] = a[rows of e] @ b[e]`` for a [N, K], b [E, K, M] -> [N, M]."""
    if _use_torch(a, b):
        res = _try_torch(lambda: torch._grouped_mm(a, b, offs=offsets), (a.device.type, a.dtype))
        if res is not None:
            return res if out is None else out.copy_(res)  # _grouped_mm has no out=
    if out is None:
        out = a.new_empty(a.shape[0], b.shape[-1])
    start = 0
    for e, n in enumerate(counts):
        if n:
            torch.mm(a[start : start + n], b[e], out=out[start : start + n])
        start += n
    return out


def gmm_wgrad(a: Tensor, g: Tensor, offsets: Tensor, counts: list[int], out: Tensor | None = None) -> Tensor:
    """Per-expert weight gradient ``out[e] = a[rows of e]^T @ g[rows of e]`` -> [E, K, M]."""
    at = a.t()
    if _use_torch(at, g):
        res = _try_torch(lambda: torch._grouped_mm(at, g, offs=offsets), (a.device.type, a.dtype))
        if res is not None:
            return res if out is None else out.copy_(res)
    if out is None:
        out = a.new_empty(len(counts), a.shape[1], g.shape[1])
    start = 0
    for e, n in enumerate(counts):
        if n:
            torch.mm(at[:, start : start + n], g[start : start + n], out=out[e])
        else:
            out[e].zero_()  # an expert without tokens gets an exact zero gradient
        start += n
    return out
