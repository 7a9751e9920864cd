"""The GPU benchmark's training measurement, smoke-run on CPU with a tiny model (the GPU run is a one-off
on a lent machine; this keeps the script from rotting between such runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moemix.moe_model import MoEConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_gpu_training  # noqa: E402


def test_cluster_model_is_the_preset_with_fewer_layers():
    cfg = bench_gpu_training.cluster_model(2)
    assert cfg.n_layers == 2 and cfg.d_model >= 1024 and cfg.n_experts >= 16
    assert cfg.n_dense_layers < cfg.n_layers


def test_training_figures_on_cpu(tmp_path):
    tiny = MoEConfig(
        vocab_size=128, max_seq_len=64, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_expert=32
    )
    rec = bench_gpu_training.bench_training(tmp_path, tiny, steps=6, seq_len=32, batch=4, device="cpu")
    assert rec["tokens_per_s"] > 0 and rec["flops_per_token"] > 0
    # MFU is the achieved FLOP/s over the measured bf16 matmul peak. No upper bound on a CPU: one without
    # native bf16 (AVX2 only) multiplies bf16 at ~0.7 GFLOP/s, 40x below fp32, so a tiny model's
    # mixed-precision step can outrun that "peak"
    assert rec["measured_bf16_peak"] > 0
    assert rec["mfu_measured_bf16"] == pytest.approx(
        rec["tokens_per_s"] * rec["flops_per_token"] / rec["measured_bf16_peak"]
    )
    assert rec["mfu_vendor_bf16"] is None  # no vendor peak for a CPU
