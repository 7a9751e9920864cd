"""Measured matmul throughput of this process's device: the denominator of MFU.

A datasheet peak means little on a shared 2-core CPU, so MFU is reported against what a large
square matmul actually achieves here, with the same thread count the training loop uses. The
measurement is ``moemix.kernels.flops.measure_matmul_flops``, so every report in the project
shares one denominator. Cached per (device, dtype, threads): measured once per process, not once
per proxy.
"""

from __future__ import annotations

import functools

import torch

from moemix.kernels.flops import measure_matmul_flops


@functools.lru_cache(maxsize=8)
def _cached(device_str: str, dtype_name: str, threads: int) -> float:
    device = torch.device(device_str)
    # bypass its own cache: that one is not keyed on the thread count, ours is
    measure = measure_matmul_flops.__wrapped__
    n = 4096 if device.type == "cuda" else 1024
    return float(measure(n=n, dtype="bfloat16" if dtype_name == "bf16" else "float32", device=str(device)))


def peak_matmul_flops(device: torch.device | str = "cpu", precision: str = "fp32") -> float:
    """Measured FLOP/s of a square matmul on ``device`` (fp32 unless ``precision='bf16'``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached(str(device), precision, torch.get_num_threads())
