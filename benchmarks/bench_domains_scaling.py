"""Scaling of the domains stage on Ray Data: 1 vs 2 workers, and memory as the corpus grows 10x.

The corpus is real text on this machine: the demo corpus (Debian docs, code, licenses, mail) and the
prose and code corpora of the mixture-quality benchmark (``bench_out/corpora``), each source written
``--copies`` times with a one-line ``# variant k`` header so exact dedup keeps every copy. The small
corpus is every 10th document of the same sources (same number of files), so "10x" is 10x the
documents and bytes, not more files.

Each run is a fresh subprocess with its own ``ray.init(num_cpus=2)``: ``seconds`` is ``run_domains``'s
wall time (Ray start excluded), ``driver_peak_rss_mb`` the subprocess's ``ru_maxrss``, and
``worker_peak_rss_mb`` the largest ``ru_maxrss`` any Ray Data worker reported after a unit. The
tokenizer is trained once up front and given to every run (``tokenizer.path``), so the runs time the
parallel steps; BPE training on the driver's bounded sample is a fixed cost (reported separately).

Usage: python benchmarks/bench_domains_scaling.py [--copies 3] [--work bench_out/domains-scaling]
Prints one JSON line per run and a summary line with the ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def real_sources() -> list[tuple[str, list[str]]]:
    """(name, texts) of every real-text source available on this machine."""
    import pyarrow.parquet as pq

    from moemix.pipeline.demo_corpus import build_demo_corpus

    out: list[tuple[str, list[str]]] = []
    demo = build_demo_corpus(None, progress=False)
    for d in demo.domains:
        out.append((f"demo_{d}", pq.read_table(demo.files[d]).column("text").to_pylist()))
    for kind in ("prose", "code"):
        for f in sorted((REPO / "bench_out" / "corpora" / kind).glob("*.jsonl")):
            with open(f) as fh:
                out.append((f"{kind}_{f.stem}", [json.loads(line)["text"] for line in fh if line.strip()]))
    return out


def build(work: Path, copies: int) -> dict[str, dict]:
    """The big and the small corpus, as one folder per source holding ``copies`` parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = {}
    sources = None
    for scale, step in (("big", 1), ("small", 10)):
        root = work / f"corpus_{scale}"
        done = root / "done.json"
        if done.exists():
            info[scale] = json.loads(done.read_text())
            continue
        sources = sources or real_sources()
        n_docs = n_bytes = 0
        for name, texts in sources:
            sub = texts[::step]
            for k in range(copies):
                body = [f"# variant {k}\n{t}" for t in sub]
                n_docs += len(body)
                n_bytes += sum(len(t.encode("utf-8")) for t in body)
                path = root / name / f"part-{k}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                # row groups of 2,000 documents (~5 MB): a reader holds one row group at a time, so a file
                # written as one giant row group would make worker memory grow with the file instead
                pq.write_table(pa.table({"text": body}), path, compression="zstd", row_group_size=2000)
        info[scale] = {"docs": n_docs, "text_mb": round(n_bytes / 2**20, 1), "root": str(root)}
        done.write_text(json.dumps(info[scale]))
    return info


def source_dirs(root: Path) -> list[Path]:
    return [p for p in sorted(root.iterdir()) if p.is_dir()]


def train_tokenizer(work: Path, small_root: Path) -> tuple[Path, float]:
    """A 4096-token BPE trained the way the stage trains it (on the small corpus)."""
    from moemix.domains.config import DomainsConfig
    from moemix.domains.ingest import SourceConfig
    from moemix.domains.stage import run_domains

    tok = work / "tokenizer.json"
    if tok.exists():
        return tok, float("nan")
    sources = [SourceConfig(path=str(p), label=p.name) for p in source_dirs(small_root)]
    t = time.perf_counter()
    res = run_domains(DomainsConfig(sources=sources), work / "tok_run", progress=False)
    dt = time.perf_counter() - t
    os.replace(res.out_dir / "tokenizer.json", tok)
    shutil.rmtree(work / "tok_run")
    return tok, dt


CHILD = """
import json, resource, sys, time
from pathlib import Path
import ray
ray.init(num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
from moemix.domains.config import DomainsConfig
from moemix.domains.ingest import SourceConfig
from moemix.domains.stage import run_domains
from moemix.domains.tokenizer import TokenizerConfig
from moemix.ray_jobs.data import ray_data_executor
root, out, tok, workers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# partitions: argv[5]
sources = [SourceConfig(path=str(p), label=p.name) for p in sorted(root.iterdir()) if p.is_dir()]
cfg = DomainsConfig(sources=sources, tokenizer=TokenizerConfig(path=tok), partitions=int(sys.argv[5]))
peaks, steps = [], {}
ray_ex = ray_data_executor(num_workers=workers, worker_peaks=peaks)
def ex(fn, units, *, what=""):
    t0 = time.perf_counter()
    out = ray_ex(fn, units, what=what)
    steps[what] = round(time.perf_counter() - t0, 2)
    return out
t = time.perf_counter()
res = run_domains(cfg, out, executor=ex, progress=False)
dt = time.perf_counter() - t
stats = json.loads(res.stats_path.read_text())
print(json.dumps({
    "seconds": dt,
    "docs_kept": stats["docs_kept"],
    "train_tokens": sum(res.tokens["train"].values()),
    "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_peak_rss_mb": max(p for _, p in peaks) / 1024,
    "worker_peak_rss_mb_by_step": {w: max(p for s, p in peaks if s == w) / 1024 for w in steps},
    "step_seconds": steps,
    "driver_seconds": dt - sum(steps.values()),
    "driver_cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
}))
"""


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run(root: Path, out: Path, tok: Path, workers: int, partitions: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RAY_ACCEPT_CALLS_FROM_ALL_NODES": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(out), str(tok), str(workers), str(partitions)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        sys.exit(f"run failed ({root.name}, {workers} workers):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=3, help="perturbed copies of every source (default 3)")
    p.add_argument(
        "--partitions",
        type=int,
        default=2,
        help="hash partitions (default 2: even the small corpus's partitions then exceed every bounded "
        "buffer, so the 10x comparison measures growth, not buffers filling up)",
    )
    p.add_argument("--work", default=str(REPO / "bench_out" / "domains-scaling"), help="scratch directory")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpora = build(work, args.copies)
    tok, bpe_s = train_tokenizer(work, Path(corpora["small"]["root"]))
    print(json.dumps({"corpora": corpora, "stage_seconds_small_in_process_with_bpe": bpe_s}), flush=True)
    results = {}
    for scale, workers in (("small", 2), ("big", 1), ("big", 2)):
        c = corpora[scale]
        out = work / f"out_{scale}_{workers}"
        r = run(Path(c["root"]), out, tok, workers, args.partitions)
        r.update(scale=scale, workers=workers, text_mb=c["text_mb"], mb_per_s=c["text_mb"] / r["seconds"])
        r["outputs"] = tree_hash(out)
        results[(scale, workers)] = r
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    b1, b2, s2 = results[("big", 1)], results[("big", 2)], results[("small", 2)]
    summary = {
        "speedup_2_vs_1_workers": round(b2["mb_per_s"] / b1["mb_per_s"], 3),
        "driver_rss_big_over_small": round(b2["driver_peak_rss_mb"] / s2["driver_peak_rss_mb"], 3),
        "worker_rss_big_over_small": round(b2["worker_peak_rss_mb"] / s2["worker_peak_rss_mb"], 3),
        "same_outputs_1_and_2_workers": b1["outputs"] == b2["outputs"],
        "load_avg_at_end": os.getloadavg()[0],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
