"""Proxy training throughput, MFU, and Ray swarm overhead. Prints one JSON object per line.

    .venv/bin/python benchmarks/bench_proxy_swarm.py                 # everything (~6-8 min on 2 cores)
    .venv/bin/python benchmarks/bench_proxy_swarm.py --only train    # throughput / MFU only

* ``train``: the demo proxy (d_model 64, 2 layers, 8 experts top-2, d_expert 128, vocab 4096,
  seq 128, batch 16) trained by ``moemix.training.loop.train`` with 1 and with 2 threads; tokens/s,
  achieved FLOP/s (``model.flops_per_token``: 6 x active matmul params + attention), and MFU against
  the fp32 matmul throughput measured in the same process with the same thread count. Median of
  ``--repeats`` runs.
* ``precision``: fp32 vs ``precision="bf16"`` (bf16 autocast over fp32 weights) training throughput,
  interleaved, for the demo proxy and a 4x wider one (d_model 256, d_expert 512), 1 thread.
  bf16 pays off on CPUs with native bf16 matmuls (AVX512-BF16/AMX) once the GEMMs are wide enough
  to outweigh autocast's casts.
* ``proxy``: one full demo proxy (``run_proxy``: train with the default TrainConfig + evaluation on
  every domain), wall seconds on 1 thread: the figure the demo budget is planned with.
* ``swarm``: N identical-budget proxies (different mixtures) three ways, all on the same 2 cores:
  (a) Ray, 1 CPU per proxy (2 at a time); (b) one after another in one process with 2 threads;
  (c) one after another with 1 thread, whose total / 2 is the ideal 2-way packing. Ray overhead =
  (a) / (c)/2 - 1: what scheduling, worker start-up and imports cost over perfect packing. On a
  shared machine the load drifts between (a), (b) and (c), so the Ray run also reports a
  within-run figure: ``ray_overhead_within_run`` = 2 x wall / sum(in-task proxy seconds) - 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moemix.moe_model import MoEConfig
from moemix.proxies.run import run_proxy, run_sequential, specs_for_mixtures
from moemix.proxies.synthetic import write_markov_domains
from moemix.token_shards import DomainTokens
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig
from moemix.training.flops import peak_matmul_flops
from moemix.training.loop import train

DEMO_MODEL = MoEConfig(
    vocab_size=4096, max_seq_len=128, d_model=64, n_layers=2, n_heads=4, n_experts=8, top_k=2, d_expert=128
)
MIX4 = {"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def bench_train(data: DomainTokens, repeats: int, steps: int) -> None:
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peak = peak_matmul_flops("cpu", "fp32")
        runs = []
        for r in range(repeats):
            cfg = TrainConfig(steps=steps, batch_size=16, seq_len=128, log_every=steps, seed=r)
            res = train(DEMO_MODEL, cfg, data, MIX4)
            runs.append(res)
        tps = statistics.median(x.tokens_per_s for x in runs)
        fps = statistics.median(x.achieved_flops_per_s for x in runs)
        emit(
            bench="proxy_train",
            threads=threads,
            steps=steps,
            batch=16,
            seq_len=128,
            params_total=runs[0].params_total,
            params_active=runs[0].params_active,
            flops_per_token=runs[0].flops_per_token,
            tokens_per_s=round(tps, 1),
            achieved_gflops=round(fps / 1e9, 3),
            matmul_peak_gflops=round(peak / 1e9, 2),
            mfu=round(fps / peak, 4),
            repeats=repeats,
        )


WIDE_MODEL = MoEConfig(
    vocab_size=4096, max_seq_len=128, d_model=256, n_layers=2, n_heads=4, n_experts=8, top_k=2, d_expert=512
)


def bench_precision(data: DomainTokens, repeats: int, steps: int) -> None:
    torch.set_num_threads(1)
    for name, model in (("demo_d64", DEMO_MODEL), ("wide_d256", WIDE_MODEL)):
        runs: dict[str, list] = {"fp32": [], "bf16": []}
        for r in range(repeats):
            for precision in runs:  # interleaved: load drifts hit both alike
                cfg = TrainConfig(
                    steps=steps,
                    batch_size=16,
                    seq_len=128,
                    log_every=steps,
                    seed=r,
                    precision=precision,
                    measure_mfu=False,
                )
                runs[precision].append(train(model, cfg, data, MIX4))
        tps = {p: statistics.median(x.tokens_per_s for x in v) for p, v in runs.items()}
        loss = {p: statistics.median(x.final_loss for x in v) for p, v in runs.items()}
        emit(
            bench="precision",
            model=name,
            d_model=model.d_model,
            threads=1,
            steps=steps,
            repeats=repeats,
            fp32_tokens_per_s=round(tps["fp32"], 1),
            bf16_tokens_per_s=round(tps["bf16"], 1),
            bf16_speedup=round(tps["bf16"] / tps["fp32"], 3),
            fp32_final_loss=round(loss["fp32"], 4),
            bf16_final_loss=round(loss["bf16"], 4),
            cpu_native_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        )


def bench_proxy(tokens_dir: Path, data: DomainTokens, out: Path) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig()  # the default = demo proxy budget
    (spec,) = specs_for_mixtures(
        [MIX4],
        model=DEMO_MODEL,
        train_cfg=cfg,
        target=TargetConfig(),
        tokens_dir=tokens_dir,
        out_dir=out,
        data=data,
    )
    t0 = time.perf_counter()
    res = run_proxy(spec)
    emit(
        bench="demo_proxy_wall",
        threads=1,
        steps=cfg.num_steps,
        tokens=res.tokens,
        wall_s=round(time.perf_counter() - t0, 2),
        train_s=round(res.train_seconds, 2),
        eval_s=round(res.seconds - res.train_seconds, 2),
        tokens_per_s=round(res.tokens_per_s, 1),
        mfu=round(res.mfu, 4),
        status=res.status,
    )


def bench_swarm(
    tokens_dir: Path, data: DomainTokens, out: Path, n: int, steps: int, seq2: bool = True
) -> None:
    import ray

    mixtures = np.random.default_rng(0).dirichlet(np.ones(4) * 2, size=n)
    cfg = TrainConfig(steps=steps, batch_size=16, seq_len=128, eval_tokens=4096, measure_mfu=False)

    def specs(tag: str):
        return specs_for_mixtures(
            mixtures,
            model=DEMO_MODEL,
            train_cfg=cfg,
            target=TargetConfig(),
            tokens_dir=tokens_dir,
            out_dir=out / tag,
            data=data,
        )

    t0 = time.perf_counter()
    seq1 = run_sequential(specs("seq1"), num_threads=1)
    seq1_wall = time.perf_counter() - t0
    seq2_wall = float("nan")
    if seq2:
        t0 = time.perf_counter()
        run_sequential(specs("seq2"), num_threads=2)
        seq2_wall = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - t0
    from moemix.ray_jobs.swarm import run_swarm

    t0 = time.perf_counter()
    ray_res = run_swarm(specs("ray"), num_cpus_per_proxy=1, progress=False)
    ray_wall = time.perf_counter() - t0
    ray.shutdown()
    assert all(r.status == "ok" for r in ray_res + seq1)
    ideal = seq1_wall / 2
    # Load-independent view from the Ray run alone: the share of 2 slots x wall spent inside proxies
    busy = sum(r.seconds for r in ray_res) / (2 * ray_wall)
    emit(
        bench="swarm",
        proxies=n,
        steps=steps,
        tokens_per_proxy=cfg.planned_tokens,
        ray_wall_s=round(ray_wall, 2),
        ray_init_s=round(init_s, 2),
        seq_1thread_wall_s=round(seq1_wall, 2),
        seq_2threads_wall_s=round(seq2_wall, 2),
        ideal_2way_s=round(ideal, 2),
        ray_overhead_vs_ideal=round(ray_wall / ideal - 1, 4),
        ray_speedup_vs_seq_2threads=round(seq2_wall / ray_wall, 3),
        ray_busy_fraction=round(busy, 4),
        ray_overhead_within_run=round(1 / busy - 1, 4),
        per_proxy_s_in_ray=round(statistics.median(r.seconds for r in ray_res), 2),
        per_proxy_s_seq1=round(statistics.median(r.seconds for r in seq1), 2),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["train", "precision", "proxy", "swarm"], default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--swarm-proxies", type=int, default=8)
    ap.add_argument("--swarm-steps", type=int, default=40)
    ap.add_argument("--no-seq2", action="store_true", help="skip the 2-thread sequential baseline")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_markov_domains(
            tmp / "tokens", n_domains=4, vocab_size=4096, train_tokens=150_000, valid_tokens=9_000
        )
        data = DomainTokens(tmp / "tokens")
        emit(
            bench="env", torch=torch.__version__, cpus=torch.get_num_threads(), python=sys.version.split()[0]
        )
        if args.only in (None, "train"):
            bench_train(data, args.repeats, args.train_steps)
        if args.only in (None, "precision"):
            bench_precision(data, args.repeats, args.train_steps)
        if args.only in (None, "proxy"):
            bench_proxy(tmp / "tokens", data, tmp / "proxy")
        if args.only in (None, "swarm"):
            bench_swarm(
                tmp / "tokens", data, tmp / "swarm", args.swarm_proxies, args.swarm_steps, not args.no_seq2
            )


if __name__ == "__main__":
    main()
