"""Measured matmul throughput, for MFU figures on whatever machine runs the job."""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=8)
def measure_matmul_flops(
    n: int = 1024,
    dtype: str = "float32",
    device: str = "cpu",
    repeats: int = 15,
    min_seconds: float = 0.5,
    max_seconds: float = 5.0,
) -> float:
    """Best achieved FLOP/s of an ``n x n @ n x n`` matmul over ``repeats`` (cached per argument set).

    Uses the threads torch is configured with, so it is the ceiling a training step on the same
    process can hope for; MFU = achieved model FLOP/s / this. The best run, not the median, and
    timed for at least ``min_seconds``: on a shared box 15 runs (0.2 s) inside one burst of load
    understated the ceiling by 2x and gave MFU > 1. At most ``max_seconds`` once 3 runs are in: a
    CPU without native bf16 (AVX2 only) multiplies bf16 at ~0.7 GFLOP/s, 3 s a run at n = 1024, where
    15 runs took 50 s to say what the first three do.
    """
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, dtype=dt, device=device)
    b = torch.randn(n, n, dtype=dt, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        t0 = time.perf_counter()
        a @ b
        sync()
        if time.perf_counter() - t0 > max_seconds / 5:  # already warm enough to be this slow
            break
    times: list[float] = []
    while (len(times) < repeats or sum(times) < min_seconds) and not (
        len(times) >= 3 and sum(times) >= max_seconds
    ):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / min(times)
