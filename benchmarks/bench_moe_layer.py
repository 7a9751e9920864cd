"""MoE layer forward+backward: reference loop vs grouped kernels vs an equal-active-FLOP dense SwiGLU.

Prints one JSON object per line (median seconds over repeats; impls are interleaved round-robin so
load from other processes hits them alike). Also measures this machine's fp32 matmul GFLOP/s and a
small-model training step's MFU. ``--write-doc`` rewrites docs/benchmarks/kernels.md.

    .venv/bin/python benchmarks/bench_moe_layer.py [--repeats 7] [--threads 2] [--write-doc]
    .venv/bin/python benchmarks/bench_moe_layer.py --goal-runs 5 [--dtype bfloat16]   # the goals, with spread
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from moemix.kernels import measure_matmul_flops, moe_ffn
from moemix.moe_model import MoEConfig, MoETransformer
from moemix.training.malloc_tuning import keep_large_allocations_on_heap

SHAPES = {
    "coarse": dict(T=4096, d=256, f=512, E=8, k=2),
    "fine": dict(T=8192, d=128, f=128, E=32, k=4),
}


def _have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# outside baselines: transformers' Mixtral experts (the HF loop, and HF's own grouped_mm path)
HF_IMPLS = ["hf_eager", "hf_grouped_mm"] if _have_transformers() else []

NOTES_MARKER = "<!-- notes -->"
DEVICE = "cpu"
DTYPE = torch.float32


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _minor_faults() -> int:
    """Page faults of this process so far: fresh-mmapped buffers show up here, not in a profiler."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def make_inputs(T, d, f, E, k, seed=0):
    """Random tokens routed by a random softmax router (near-even expert loads, as after balancing)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g)
    logits = torch.randn(T, E, generator=g)
    w, idx = torch.softmax(logits, -1).topk(k, -1)
    w1 = torch.randn(E, d, 2 * f, generator=g) / d**0.5
    w2 = torch.randn(E, f, d, generator=g) / f**0.5
    dense1 = torch.randn(d, 2 * k * f, generator=g) / d**0.5
    dense2 = torch.randn(k * f, d, generator=g) / (k * f) ** 0.5
    out = [x, idx, w, w1, w2, dense1, dense2]
    return [t.to(DEVICE, DTYPE) if t.is_floating_point() and t is not w else t.to(DEVICE) for t in out]


def hf_mixtral_experts(implementation: str, w1: torch.Tensor, w2: torch.Tensor) -> torch.nn.Module:
    """transformers' own Mixtral experts module holding our weights: the outside baseline.

    ``eager`` is the per-expert loop everyone measures against; ``grouped_mm`` is HF's own grouped path.
    """
    from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralExperts

    E, d, two_f = w1.shape
    cfg = MixtralConfig(hidden_size=d, intermediate_size=two_f // 2, num_local_experts=E)
    cfg._experts_implementation = implementation
    experts = MixtralExperts(cfg).to(w1.device, w1.dtype)
    with torch.no_grad():  # HF stores Linear-style [out, in] matrices
        experts.gate_up_proj.copy_(w1.transpose(1, 2))
        experts.down_proj.copy_(w2.transpose(1, 2))
    return experts


def step_fn(name, x, idx, w, w1, w2, dense1, dense2):
    leaves = [t.clone().requires_grad_() for t in (x, w, w1, w2, dense1, dense2)]
    gout = torch.randn_like(x)
    hf = hf_mixtral_experts(name.removeprefix("hf_"), w1, w2) if name.startswith("hf_") else None

    def run():
        for t in leaves:
            t.grad = None
        xx, ww, a, b, da, db = leaves
        if hf is not None:
            hf.zero_grad(set_to_none=True)
            out = hf(xx, idx, ww)
        elif name == "dense":
            g, u = (xx @ da).chunk(2, -1)
            out = (F.silu(g) * u) @ db
        else:
            spec, _, chunk_mib = name.partition("@")  # grouped@0: one chunk (no cache blocking)
            impl, _, backend = spec.partition(":")
            os.environ["MOEMIX_GMM_BACKEND"] = backend or "auto"
            if chunk_mib:
                os.environ["MOEMIX_CHUNK_MIB"] = chunk_mib
            else:
                os.environ.pop("MOEMIX_CHUNK_MIB", None)
            out = moe_ffn(xx, idx, ww, a, b, impl=impl)
        out.backward(gout)

    return run


def bench_layer(shape: str, repeats: int, impls: list[str]) -> list[dict]:
    p = SHAPES[shape]
    inputs = make_inputs(**p)
    fns = {name: step_fn(name, *inputs) for name in impls}
    times: dict[str, list[float]] = {name: [] for name in impls}
    cpu: dict[str, list[float]] = {name: [] for name in impls}
    faults: dict[str, list[int]] = {name: [] for name in impls}
    for name in impls:  # warm-up
        fns[name]()
    for _ in range(repeats):
        for name in impls:
            _sync()
            t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
            fns[name]()
            _sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            faults[name].append(_minor_faults() - f0)
    os.environ.pop("MOEMIX_GMM_BACKEND", None)
    os.environ.pop("MOEMIX_CHUNK_MIB", None)
    flops = 3 * 2 * p["T"] * p["k"] * 3 * p["d"] * p["f"]  # fwd+bwd matmul FLOPs of the active experts
    dense_t = statistics.median(times["dense"]) if "dense" in times else float("nan")
    dense_c = statistics.median(cpu["dense"]) if "dense" in cpu else float("nan")
    ref_t = statistics.median(times["reference"]) if "reference" in times else float("nan")
    rows = []
    for name in impls:
        med, med_c = statistics.median(times[name]), statistics.median(cpu[name])
        rows.append(
            dict(
                bench="moe_layer",
                shape=shape,
                **p,
                impl=name,
                median_s=round(med, 5),
                cpu_s=round(med_c, 5),
                gflops=round(flops / med / 1e9, 2),
                vs_dense=round(med / dense_t, 3),
                cpu_vs_dense=round(med_c / dense_c, 3),
                speedup_vs_reference=round(ref_t / med, 2),
                page_faults=int(statistics.median(faults[name])),
            )
        )
    return rows


GOAL_SPEEDUP_FINE = 2.0  # grouped vs reference on the fine-grained shape
GOAL_VS_DENSE = 1.3  # grouped / dense on both shapes


def check_goals(runs: int, repeats: int) -> dict:
    """The issue's two goals over ``runs`` independent interleaved measurements: the per-run ratios,
    then their median / min / max, since on a shared box a single run's ratio moves by +-10%."""
    per_run: dict[str, list[float]] = {
        "fine_speedup_vs_reference": [],
        "fine_vs_dense": [],
        "coarse_vs_dense": [],
    }
    for i in range(runs):
        for shape in ("fine", "coarse"):
            rows = {r["impl"]: r for r in bench_layer(shape, repeats, ["reference", "grouped", "dense"])}
            g = rows["grouped"]
            per_run[f"{shape}_vs_dense"].append(g["vs_dense"])
            if shape == "fine":
                per_run["fine_speedup_vs_reference"].append(g["speedup_vs_reference"])
            print(
                json.dumps(
                    dict(
                        bench="goal_run",
                        run=i,
                        shape=shape,
                        grouped_s=g["median_s"],
                        reference_s=rows["reference"]["median_s"],
                        dense_s=rows["dense"]["median_s"],
                        speedup_vs_reference=g["speedup_vs_reference"],
                        vs_dense=g["vs_dense"],
                    )
                ),
                flush=True,
            )
    summary = {k: dict(median=statistics.median(v), min=min(v), max=max(v)) for k, v in per_run.items()}
    summary["fine_speedup_vs_reference"]["goal"] = f">= {GOAL_SPEEDUP_FINE}"
    summary["fine_speedup_vs_reference"]["holds"] = (
        summary["fine_speedup_vs_reference"]["median"] >= GOAL_SPEEDUP_FINE
    )
    for k in ("fine_vs_dense", "coarse_vs_dense"):
        summary[k]["goal"] = f"<= {GOAL_VS_DENSE}"
        summary[k]["holds"] = summary[k]["median"] <= GOAL_VS_DENSE
    return dict(
        bench="goals",
        dtype=str(DTYPE).removeprefix("torch."),
        threads=torch.get_num_threads(),
        runs=runs,
        repeats=repeats,
        **summary,
    )


def bench_model_step(repeats: int, peak: float) -> dict:
    cfg = MoEConfig()  # the default ~1M-active proxy
    torch.manual_seed(0)
    model = MoETransformer(cfg).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b, t = 16, 256
    ids = torch.randint(0, cfg.vocab_size, (b, t + 1), device=DEVICE)
    times = []
    lowp = DTYPE in (torch.bfloat16, torch.float16)  # fp32 master weights, bf16 compute: what training uses
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.autocast(DEVICE, dtype=DTYPE, enabled=lowp):
            out = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    fpt = model.flops_per_token(t)
    achieved = fpt * b * t / med
    return dict(
        bench="model_step",
        batch=b,
        seq_len=t,
        params=model.num_params(),
        params_active=model.num_params(active_only=True),
        flops_per_token=fpt,
        median_s=round(med, 4),
        tokens_per_s=round(b * t / med),
        achieved_gflops=round(achieved / 1e9, 2),
        mfu=round(achieved / peak, 3),
    )


HEADER = [
    "# MoE kernel benchmarks",
    "",
    "Produced by `benchmarks/bench_moe_layer.py --write-doc` (forward+backward of one MoE FFN layer; median "
    "of "
    "interleaved repeats). Each run replaces only its own section (device, dtype, thread count, malloc "
    "tuning). Load from other processes moves absolute times between runs: compare ratios within one run.",
]


def write_doc(rows: list[dict], path: Path) -> None:
    """Insert/replace this run's section; keep other runs' sections and the notes below NOTES_MARKER."""
    from moemix._io import write_text_atomic

    env = next(r for r in rows if r["bench"] == "env")
    malloc = "" if env["malloc_tuned"] or env["device"] != "cpu" else " malloc=default"
    key = f"<!-- run {env['device']} {env['dtype']} threads={env['threads']}{malloc} -->"
    title = f"## {env['device']}, {env['dtype']}, {env['threads']} torch thread(s)"
    if env["device"] == "cpu":
        title += ", malloc tuned" if env["malloc_tuned"] else ", glibc malloc defaults (`--no-malloc-tuning`)"
    sec = [
        key,
        title,
        "",
        f"torch {env['torch']}; measured matmul {env['matmul_gflops']} GFLOP/s (1024^3). impl `grouped` = "
        "auto layout; `grouped:loop` / `grouped:torch` / `grouped:capacity` force the jagged per-expert mm "
        "loop "
        "/ jagged torch._grouped_mm / padded bmm; `grouped@0` = one chunk (no cache blocking, "
        "`MOEMIX_CHUNK_MIB=0`); `hf_eager` / `hf_grouped_mm` = transformers' `MixtralExperts` "
        "with the same weights. CPU s = process CPU time (all threads); faults = minor page faults per step.",
        "",
        "| shape (T, d, f, E, k) | impl | wall s | GFLOP/s | wall / dense | CPU s | CPU / dense | "
        "speed-up vs reference | faults |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["bench"] == "moe_layer":
            sec.append(
                f"| {r['shape']} ({r['T']}, {r['d']}, {r['f']}, {r['E']}, {r['k']}) | {r['impl']} | "
                f"{r['median_s']} | {r['gflops']} | {r['vs_dense']} | {r['cpu_s']} | {r['cpu_vs_dense']} | "
                f"{r['speedup_vs_reference']} | {r['page_faults']} |"
            )
    m = next((r for r in rows if r["bench"] == "model_step"), None)
    if m:
        amp = ", bf16 autocast over fp32 weights" if env["dtype"] != "float32" else ""
        sec += [
            "",
            f"Default `MoEConfig` training step (batch {m['batch']} x {m['seq_len']}, AdamW{amp}): "
            f"{m['params']:,} params ({m['params_active']:,} active), {m['flops_per_token']:.3g} "
            "FLOPs/token, "
            f"{m['median_s']} s/step, {m['tokens_per_s']} tokens/s, {m['achieved_gflops']} GFLOP/s, "
            f"MFU {m['mfu']:.1%} of the measured matmul peak.",
        ]
    sec.append("<!-- /run -->")
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES_MARKER) :].rstrip() if NOTES_MARKER in old else ""
    body = old[: old.index(NOTES_MARKER)] if notes else old
    runs = {}
    for chunk in body.split("<!-- run ")[1:]:
        text = "<!-- run " + chunk[: chunk.index("<!-- /run -->")] + "<!-- /run -->"
        runs[text.splitlines()[0]] = text
    runs[key] = "\n".join(sec)
    out = HEADER + [""] + ["\n\n".join(runs[k] for k in sorted(runs))]
    if notes:
        out += ["", notes]
    write_text_atomic(path, "\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument(
        "--impls",
        nargs="*",
        default=[
            "reference",
            "grouped",
            "grouped@0",
            "grouped:loop",
            "grouped:torch",
            "grouped:capacity",
            "dense",
            *HF_IMPLS,
        ],
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--write-doc", action="store_true")
    ap.add_argument(
        "--goal-runs",
        type=int,
        default=0,
        help="only check the issue's goals: this many independent runs of reference/grouped/dense on "
        "both shapes, then their median/min/max ratios",
    )
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's mmap threshold alone (to measure what moemix.training.malloc_tuning buys)",
    )
    args = ap.parse_args()
    malloc_tuned = False if args.no_malloc_tuning else keep_large_allocations_on_heap()
    global DEVICE, DTYPE
    DEVICE, DTYPE = args.device, getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    peak = measure_matmul_flops(dtype=args.dtype, device=args.device)
    rows = [
        dict(
            bench="env",
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            torch=torch.__version__,
            malloc_tuned=malloc_tuned,
            matmul_gflops=round(peak / 1e9, 1),
        )
    ]
    print(json.dumps(rows[0]), flush=True)
    if args.goal_runs:
        print(json.dumps(check_goals(args.goal_runs, args.repeats)), flush=True)
        return
    for shape in args.shapes:
        for r in bench_layer(shape, args.repeats, args.impls):
            print(json.dumps(r), flush=True)
            rows.append(r)
    if args.device == "cpu":
        m = bench_model_step(max(3, args.repeats // 2), peak)
        print(json.dumps(m), flush=True)
        rows.append(m)
    if args.write_doc:
        write_doc(rows, Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "kernels.md")


if __name__ == "__main__":
    main()
