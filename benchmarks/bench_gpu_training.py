"""Single-GPU bf16 training throughput and MFU of a reduced-depth cluster-preset model, and expert-kernel
times (Triton vs grouped_mm vs reference). Runs without Ray, pytest or LightGBM:

    PYTHONPATH=src python3 benchmarks/bench_gpu_training.py OUT_DIR [--layers 4] [--steps 30]

The model is the cluster preset's pretrain model (read from its YAML when PyYAML is there, else the
values below, which mirror it) with ``--layers`` layers. Training is ``moemix.training.train`` itself on
synthetic Markov domains (bf16 autocast over fp32 weights, fused AdamW), with the first third of the
steps excluded as warm-up. MFU is against the vendor's dense bf16 peak for known devices and against a
measured bf16 matmul peak otherwise. Writes OUT_DIR/gpu_training.json and prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from moemix.kernels import moe_ffn
from moemix.moe_model import MoEConfig
from moemix.token_shards import DomainTokens
from moemix.training.config import TrainConfig
from moemix.training.flops import peak_matmul_flops
from moemix.training.loop import train

PRESET = Path(__file__).resolve().parents[1] / "src/moemix/pipeline/presets/cluster-gpu.yaml"
# dense bf16 tensor-core peaks (no sparsity), FLOP/s
VENDOR_BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}
FALLBACK_MODEL = dict(
    vocab_size=50304,
    max_seq_len=4096,
    d_model=2048,
    n_layers=24,
    n_heads=16,
    n_experts=64,
    top_k=8,
    d_expert=1408,
)


def cluster_model(layers: int) -> MoEConfig:
    fields = dict(FALLBACK_MODEL)
    try:
        import yaml

        fields = yaml.safe_load(PRESET.read_text())["pretrain"]["model"]
    except Exception as e:  # no PyYAML on the GPU box, or the preset moved: say which model was used
        print(json.dumps({"note": f"cluster preset not read ({type(e).__name__}); using the built-in copy"}))
    allowed = {f.name for f in dataclasses.fields(MoEConfig)}
    cfg = MoEConfig(**{k: v for k, v in fields.items() if k in allowed})
    return dataclasses.replace(cfg, n_layers=layers, n_dense_layers=min(cfg.n_dense_layers, layers - 1))


def vendor_peak(name: str) -> float | None:
    return next((v for k, v in VENDOR_BF16_PEAK.items() if k in name), None)


def bench_training(
    out: Path, model: MoEConfig, steps: int, seq_len: int, batch: int, device: str = "cuda"
) -> dict:
    from moemix.proxies.synthetic import write_markov_domains

    tokens_dir = out / "tokens"
    if not (tokens_dir / "meta.json").exists():
        per_domain = max(20_000, steps * batch * seq_len // 2)  # every domain seen about half an epoch
        write_markov_domains(
            tokens_dir,
            n_domains=4,
            vocab_size=model.vocab_size,
            seed=0,
            train_tokens={f"d{i}": per_domain for i in range(4)},
            valid_tokens=8192,
        )
    data = DomainTokens(tokens_dir)
    model = dataclasses.replace(model, vocab_size=max(model.vocab_size, data.vocab_size), max_seq_len=seq_len)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        seq_len=seq_len,
        lr=3e-4,
        warmup_frac=0.1,
        log_every=1,
        precision="bf16",
        device=device,
        measure_mfu=False,
    )
    cuda = device == "cuda"
    stamps: list[float] = []

    def on_log(rec: dict) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res = train(model, cfg, data, {f"d{i}": 0.25 for i in range(4)}, on_log=on_log)
    warm = max(1, steps // 3)
    tps = (len(stamps) - warm) * cfg.tokens_per_step / (stamps[-1] - stamps[warm - 1])
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = vendor_peak(name)
    measured_peak = peak_matmul_flops(torch.device(device), "bf16")
    rec = {
        "figure": "training",
        "device": name,
        "layers": model.n_layers,
        "d_model": model.d_model,
        "experts": model.n_experts,
        "top_k": model.top_k,
        "params_total": res.params_total,
        "params_active": res.params_active,
        "seq_len": seq_len,
        "batch": batch,
        "tokens_per_s": tps,
        "flops_per_token": res.flops_per_token,
        "mfu_vendor_bf16": tps * res.flops_per_token / peak if peak else None,
        "vendor_bf16_peak": peak,
        "mfu_measured_bf16": tps * res.flops_per_token / measured_peak,
        "measured_bf16_peak": measured_peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "final_loss": res.final_loss,
        "kernel": "auto",
    }
    print(json.dumps(rec), flush=True)
    return rec


def bench_kernels(T: int, d: int, f: int, E: int, k: int, repeats: int = 20) -> list[dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    logits = torch.randn(T, E, device="cuda", generator=gen)
    w, idx = torch.topk(logits.softmax(-1), k, dim=-1)
    w1 = (torch.randn(E, d, 2 * f, device="cuda", generator=gen) * d**-0.5).bfloat16()
    w2 = (torch.randn(E, f, d, device="cuda", generator=gen) * f**-0.5).bfloat16()
    out = []
    for impl in ("reference", "grouped", "triton"):
        try:
            times = []
            for _ in range(repeats + 3):
                xs, a, b = (
                    x.clone().requires_grad_(),
                    w1.clone().requires_grad_(),
                    w2.clone().requires_grad_(),
                )
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                y = moe_ffn(xs, idx, w.to(x.dtype), a, b, impl=impl)
                y.float().square().mean().backward()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rec = {
                "figure": "expert_kernel",
                "impl": impl,
                "T": T,
                "d": d,
                "f": f,
                "E": E,
                "k": k,
                "fwd_bwd_ms": 1e3 * statistics.median(times[3:]),
            }
        except Exception as e:  # one impl failing must not hide the others' figures
            rec = {"figure": "expert_kernel", "impl": impl, "error": f"{type(e).__name__}: {e}"[:300]}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"torch": torch.__version__}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None
    shape = cluster_model(1)
    results["kernels"] = bench_kernels(
        T=16384, d=shape.d_model, f=shape.d_expert, E=shape.n_experts, k=shape.top_k
    )
    try:
        results["training"] = bench_training(
            args.out, cluster_model(args.layers), args.steps, args.seq_len, args.batch
        )
    except Exception as e:  # record it with the kernel figures rather than lose both
        results["training"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps(results["training"]), flush=True)
    (args.out / "gpu_training.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
