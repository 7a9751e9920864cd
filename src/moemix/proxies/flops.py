"""Measured matmul throughput of this process's device: the denominator of MFU.

A datasheet peak means little on a shared 2-core CPU, so MFU is reported against what a large
square matmul actually achieves here, with the same thread count the training loop uses. If the
kernels package ships a measurement (``moemix.kernels.flops.measure_matmul_flops``) it is used so
every report in the project shares one denominator; otherwise a local fallback times ``a @ b``.
Cached per (device, dtype, threads): measured once per process, not once per proxy.
"""

from __future__ import annotations

import functools
import time

import torch


def _measure_local(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    (a @ b).sum().item()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        c = a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
        del c
    return 2.0 * n**3 / best


@functools.lru_cache(maxsize=8)
def _cached(device_str: str, dtype_name: str, threads: int) -> float:
    device = torch.device(device_str)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    try:
        from moemix.kernels.flops import measure_matmul_flops
    except ImportError:  # kernels package without a measurement: time it here
        measure_matmul_flops = None
    if measure_matmul_flops is not None:
        # bypass its own cache: that one is not keyed on the thread count, ours is
        fn = getattr(measure_matmul_flops, "__wrapped__", measure_matmul_flops)
        n = 4096 if device.type == "cuda" else 1024
        return float(fn(n=n, dtype="bfloat16" if dtype_name == "bf16" else "float32", device=str(device)))
    n = 4096 if device.type == "cuda" else 768
    return _measure_local(device, dtype, n, repeats=5 if device.type == "cuda" else 3)


def peak_matmul_flops(device: torch.device | str = "cpu", precision: str = "fp32") -> float:
    """Measured FLOP/s of a square matmul on ``device`` (fp32 unless ``precision='bf16'``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached(str(device), precision, torch.get_num_threads())
