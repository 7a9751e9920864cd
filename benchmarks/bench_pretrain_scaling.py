"""Pretraining throughput and per-rank memory on 1 vs 2 workers (FSDP2 over gloo on CPU, NCCL on GPU).

    .venv/bin/python benchmarks/bench_pretrain_scaling.py [--steps 60] [--repeats 3] [--micro 0]

Trains the demo preset's pretrain model (d_model 96, 3 layers, 8 experts top-2, vocab 2048 on synthetic
Markov domains of that vocabulary) for ``--steps`` steps of the preset's global batch (16 x 128 tokens)
with 1 process and with 2 ranks, each rank on one thread, ``--repeats`` times in alternation. Prints the
median tokens/s of each, the scaling efficiency (2-rank tokens/s / (2 x 1-rank tokens/s)), and each
rank's parameter + optimizer bytes (its FSDP shards) and peak RSS. Each run is fresh processes (gloo
rendezvous on a free port); the first 10 steps are excluded from the throughput as warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP_STEPS = 10


# (label, world size, pretrain.parallel): one process, FSDP2 over 2 ranks, and FSDP2 with the experts
# split over the same 2 ranks (expert parallelism)
LAYOUTS = (("1 process", 1, {}), ("2 FSDP2", 2, {}), ("2 FSDP2 + EP 2", 2, {"ep": 2}))


def _worker(spec_path: str, rank: int, world: int, port: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from moemix.pipeline.config import load_config
    from moemix.token_shards import DomainTokens
    from moemix.training.loop import train
    from moemix.training.parallel import ParallelConfig

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config()
    model = dataclasses.replace(cfg.pretrain.model, vocab_size=spec["vocab"])
    tc = dataclasses.replace(
        cfg.pretrain.train,
        steps=spec["steps"],
        log_every=1,
        measure_mfu=False,
        num_threads=1,
        micro_batch_size=spec["micro"],
    )
    stamps: list[float] = []
    res = train(
        model,
        tc,
        DomainTokens(spec["tokens"]),
        spec["mixture"],
        rank=rank,
        world_size=world,
        parallel=ParallelConfig(**spec["parallel"]),
        on_log=lambda rec: stamps.append(time.perf_counter()),
    )
    timed = stamps[-1] - stamps[WARMUP_STEPS - 1]
    tokens = (len(stamps) - WARMUP_STEPS) * tc.tokens_per_step
    Path(f"{out}.{rank}").write_text(
        json.dumps(
            {
                "tokens_per_s": tokens / timed,
                "param_bytes": res.local_param_bytes,
                "optimizer_bytes": res.local_optimizer_bytes,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )
    if world > 1:
        dist.barrier()
        # skip gloo's teardown, which sometimes aborts the process after the work is done
        os._exit(0)


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run(spec_path: Path, world: int, out: Path) -> list[dict]:
    port = _port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(spec_path), str(r), str(world), port, str(out)]
        )
        for r in range(world)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a rank failed (exit {p.returncode})")
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        _worker(argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--micro", type=int, default=0, help="micro_batch_size (0 = the whole per-rank batch)")
    args = p.parse_args(argv)

    from moemix.proxies.synthetic import write_markov_domains

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = 2048
        write_markov_domains(
            tmp / "tokens",
            n_domains=4,
            vocab_size=vocab,
            seed=0,
            train_tokens={f"d{i}": 400_000 for i in range(4)},
            valid_tokens=4096,
        )
        base = {
            "tokens": str(tmp / "tokens"),
            "vocab": vocab,
            "steps": args.steps,
            "micro": args.micro,
            "mixture": {f"d{i}": 0.25 for i in range(4)},
        }
        specs = []
        for i, (_, _, parallel) in enumerate(LAYOUTS):
            specs.append(tmp / f"spec-{i}.json")
            specs[-1].write_text(json.dumps({**base, "parallel": parallel}))
        results: list[list[list[dict]]] = [[] for _ in LAYOUTS]
        for rep in range(args.repeats):
            for i, (label, world, _) in enumerate(LAYOUTS):  # alternated: drift in the load hits all alike
                results[i].append(run(specs[i], world, tmp / f"out-{i}-{rep}"))
                print(f"repeat {rep} {label}: {results[i][-1][0]['tokens_per_s']:,.0f} tokens/s", flush=True)

    tps = [statistics.median(r[0]["tokens_per_s"] for r in res) for res in results]
    print(
        f"\ndemo pretrain model, {args.steps} steps x 16 x 128 tokens, 1 thread per rank, median of "
        f"{args.repeats}"
    )
    print(
        f"{'layout':>16} {'tokens/s':>10} {'params+opt MB/rank':>19} {'vs 1 process':>13} {'peak RSS MB':>12}"
    )
    whole = results[0][-1][0]["param_bytes"] + results[0][-1][0]["optimizer_bytes"]
    for (label, _world, _), t, res in zip(LAYOUTS, tps, results):
        last = res[-1]
        mem = max(r["param_bytes"] + r["optimizer_bytes"] for r in last)
        rss = max(r["peak_rss_mb"] for r in last)
        print(f"{label:>16} {t:>10,.0f} {mem / 2**20:>19.2f} {mem / whole:>12.3f}x {rss:>12.0f}")
    for (label, world, _), t in zip(LAYOUTS[1:], tps[1:]):
        print(f"scaling efficiency, {label} vs {world} x 1 process: {t / (world * tps[0]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
