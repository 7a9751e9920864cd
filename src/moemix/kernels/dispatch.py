"""Token -> expert dispatch shared by the grouped and Triton paths.

The (token, slot) assignments are flattened and stably sorted by expert id (torchtitan-style), so
each expert owns one contiguous row range of the sorted buffer. Stability makes the order inside an
expert deterministic (ascending token id), which keeps results bit-reproducible run to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Dispatch:
    """Sorted routing plan for ``N = T * k`` (token, slot) pairs."""

    order: Tensor  # [N] int64: flat (token*k + slot) index of each sorted row
    token: Tensor  # [N] int64: source token of each sorted row
    counts: Tensor  # [E] int64: rows per expert
    offsets: Tensor  # [E] int32: cumulative end row of each expert (torch._grouped_mm's ``offs``)
    n_experts: int

    @property
    def starts(self) -> Tensor:
        return self.offsets.to(torch.int64) - self.counts


def _stable_argsort(keys: Tensor, n_keys: int) -> Tensor:
    if keys.device.type == "cpu" and n_keys <= np.iinfo(np.int16).max:
        # numpy's stable sort is a single-threaded radix sort for int16 keys; torch's CPU sort runs OpenMP
        # passes that stall on a loaded machine (docs/benchmarks/kernels.md)
        return torch.from_numpy(np.argsort(keys.numpy().astype(np.int16), kind="stable"))
    return torch.argsort(keys.to(torch.int32), stable=True)


def make_dispatch(topk_idx: Tensor, n_experts: int) -> Dispatch:
    """Plan the expert-sorted layout for ``topk_idx`` [T, k]."""
    if topk_idx.dim() != 2:
        raise ValueError(f"topk_idx must be [T, k], got shape {tuple(topk_idx.shape)}")
    k = topk_idx.shape[1]
    flat = topk_idx.reshape(-1)
    order = _stable_argsort(flat, n_experts)
    counts = torch.bincount(flat, minlength=n_experts)
    if counts.numel() > n_experts:
        raise ValueError(f"topk_idx holds expert id >= n_experts={n_experts}")
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    return Dispatch(order=order, token=order // k, counts=counts, offsets=offsets, n_experts=n_experts)
