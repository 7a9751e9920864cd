"""Embedding + assignment throughput and memory of cluster mode (hashed embedder). Prints JSON lines.

  .venv/bin/python benchmarks/bench_embed_assign.py [--docs 20000] [--scale-docs 10000] [--reps 3]

* ``inproc``: docs/s of ``ClusterModel.assign`` (embed + nearest centroid) in 1 process and in 2 processes
  (one per core), ~1 KB documents, median of ``--reps``.
* ``stream``: peak RSS of a fresh process running ``assign_parquet`` over a 1x and a 10x parquet corpus;
  streaming keeps it flat.

The Ray path of assignment is the domains stage's route step (``benchmarks/bench_domains_scaling.py``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from corpus import synthetic_docs  # noqa: E402

from moemix.domains.assign import assign_parquet  # noqa: E402
from moemix.domains.cluster import ClusterConfig, ClusterModel, fit_cluster_model  # noqa: E402

_MODEL: ClusterModel | None = None


def _init_worker(model_dir: str) -> None:
    global _MODEL
    _MODEL = ClusterModel.load(Path(model_dir))
    _MODEL.assign(["warm up"])


def _assign_chunk(texts: list[str]) -> int:
    for s in range(0, len(texts), 1024):
        _MODEL.assign(texts[s : s + 1024])
    return len(texts)


def emit(**rec) -> None:
    print(json.dumps(rec), flush=True)


def write_corpus(path: Path, n: int, seed: int) -> None:
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for s in range(0, n, 10000):
            docs = synthetic_docs(min(10000, n - s), seed=seed + s)
            w.write_table(
                pa.table({"id": np.arange(s, s + len(docs)), "text": docs}, schema=schema),
                row_group_size=2048,
            )


def _peak_rss_mb() -> float:
    """This process's high-water RSS. /proc VmHWM, not ru_maxrss: the latter keeps the forking parent's
    peak across exec, which would report the benchmark driver's memory instead of the child's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_assign(model_dir: str, in_file: str, out_dir: str) -> None:
    model = ClusterModel.load(Path(model_dir))
    model.assign(["warm up"])
    base = _peak_rss_mb()
    t = time.perf_counter()
    assign_parquet(Path(model_dir), [Path(in_file)], Path(out_dir), batch_size=1024, model=model)
    dt = time.perf_counter() - t
    n = pq.ParquetFile(in_file).metadata.num_rows
    peak = _peak_rss_mb()
    print(json.dumps({"docs": n, "seconds": dt, "peak_rss_mb": peak, "rss_after_load_mb": base}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--scale-docs", type=int, default=10000, help="1x corpus size for the memory test")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_assign(*args.child)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    fit_docs = synthetic_docs(5000, seed=1)
    t = time.perf_counter()
    model = fit_cluster_model(fit_docs, ClusterConfig(), seed=0)
    emit(
        bench="fit",
        docs=len(fit_docs),
        seconds=round(time.perf_counter() - t, 2),
        n_domains=model.n_domains,
        dim=model.embedder.dim,
        n_fine=len(model.centroids),
    )
    model_dir = tmp / "model"
    model.save(model_dir)
    docs = synthetic_docs(args.docs, seed=2)
    mean_chars = float(np.mean([len(d) for d in docs]))

    _init_worker(str(model_dir))
    rates = []
    for _ in range(args.reps):
        t = time.perf_counter()
        _assign_chunk(docs)
        rates.append(len(docs) / (time.perf_counter() - t))
    emit(
        bench="inproc",
        processes=1,
        docs=len(docs),
        mean_chars=round(mean_chars),
        docs_per_s=round(statistics.median(rates)),
        runs=[round(r) for r in rates],
    )

    halves = [docs[: len(docs) // 2], docs[len(docs) // 2 :]]
    with mp.get_context("fork").Pool(2, initializer=_init_worker, initargs=(str(model_dir),)) as pool:
        pool.map(_assign_chunk, [["warm"], ["warm"]])
        rates = []
        for _ in range(args.reps):
            t = time.perf_counter()
            pool.map(_assign_chunk, halves, chunksize=1)
            rates.append(len(docs) / (time.perf_counter() - t))
    emit(
        bench="inproc",
        processes=2,
        docs=len(docs),
        mean_chars=round(mean_chars),
        docs_per_s=round(statistics.median(rates)),
        runs=[round(r) for r in rates],
    )

    for scale in (1, 10):
        n = args.scale_docs * scale
        f = tmp / f"corpus_{scale}x.parquet"
        write_corpus(f, n, seed=100)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(model_dir), str(f), str(tmp / f"out_{scale}x")],
            check=True,
            capture_output=True,
            text=True,
        )
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        emit(
            bench="stream",
            scale=f"{scale}x",
            docs=rec["docs"],
            input_mb=round(f.stat().st_size / 2**20, 1),
            docs_per_s=round(rec["docs"] / rec["seconds"]),
            peak_rss_mb=round(rec["peak_rss_mb"]),
            rss_after_model_load_mb=round(rec["rss_after_load_mb"]),
        )


if __name__ == "__main__":
    main()
