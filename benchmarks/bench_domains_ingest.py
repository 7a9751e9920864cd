"""Throughput and memory of the domains stage on the demo corpus.

Prints one JSON line per measurement (medians over --repeats). Each measurement runs in a fresh
subprocess so its peak RSS (ru_maxrss) is its own.

- ``ingest``: read + normalize + dedup + split + write per-domain text parts, at 1x and 10x the
  demo corpus. The 10x corpus is 10 perturbed copies of every real document (a one-line variant
  header defeats exact dedup), so the dedup set and the writers see 10x the documents; bounded
  memory means peak RSS barely moves.
- ``tokenize``: encode_batch throughput of the trained demo tokenizer.
- ``stage``: the whole ``run_domains`` on the 1x demo corpus (label mode, BPE training included).

Usage: python benchmarks/bench_domains_ingest.py [--repeats 3] [--scales 1,10] [--no-stage]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_scaled(corpus_dir: Path, out: Path, scale: int) -> Path:
    """``scale`` perturbed copies of every demo document, streamed file by file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(corpus_dir.glob("*.parquet")):
        t = pq.read_table(f)
        for k in range(scale):
            texts = t.column("text").to_pylist()
            if k:
                texts = [f"# variant {k}\n{x}" for x in texts]
            ids = [f"{i}~{k}" for i in t.column("id").to_pylist()]
            pq.write_table(
                pa.table({"text": texts, "source": t.column("source"), "id": ids}),
                out / f"{f.stem}-{k:02d}.parquet",
                compression="zstd",
            )
    return out


def child_ingest(corpus: Path, work: Path) -> dict:
    from moemix.pipeline.domains import DomainRouter, DomainsConfig, SlugMap
    from moemix.pipeline.ingest import IngestStats, SourceConfig, ingest

    cfg = DomainsConfig()
    stats = IngestStats()
    router = DomainRouter(work, cfg, stats)
    slugs = SlugMap(cfg.max_domains, "source")
    src = SourceConfig(path=str(corpus / "*.parquet"), label_column="source", id_column="id")
    t0 = time.perf_counter()
    n_bytes = 0
    for batch in ingest([src], cfg.valid_fraction, None, cfg.batch_size, stats):
        for d in batch:
            n_bytes += len(d.text)
            router.add(slugs(d.label), d.split, d.id, d.source, d.label, d.text)
    router.close()
    dt = time.perf_counter() - t0
    return {
        "docs_read": stats.docs_read,
        "docs_kept": stats.docs_kept,
        "duplicates": stats.duplicates,
        "seconds": dt,
        "docs_per_s": stats.docs_read / dt,
        "mb_per_s": n_bytes / dt / 1e6,
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_tokenize(corpus: Path, tokenizer: Path) -> dict:
    import pyarrow.parquet as pq

    from moemix.pipeline.tokenizer import encode_batch, load_tokenizer

    tok = load_tokenizer(tokenizer)
    texts = [t for f in sorted(corpus.glob("*.parquet")) for t in pq.read_table(f).column("text").to_pylist()]
    texts = texts[::4]  # a quarter of every domain keeps the run short
    n_bytes = sum(len(t.encode()) for t in texts)
    t0 = time.perf_counter()
    n_tok = 0
    for i in range(0, len(texts), 1024):
        n_tok += sum(map(len, encode_batch(tok, texts[i : i + 1024])))
    dt = time.perf_counter() - t0
    return {
        "docs": len(texts),
        "docs_per_s": len(texts) / dt,
        "mb_per_s": n_bytes / dt / 1e6,
        "bytes_per_token": n_bytes / n_tok,
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_stage(cache: Path, out: Path) -> dict:
    from moemix.pipeline.domains import DomainsConfig, run_domains

    t0 = time.perf_counter()
    res = run_domains(DomainsConfig(demo_cache_dir=str(cache)), out, progress=False)
    dt = time.perf_counter() - t0
    stats = json.loads(res.stats_path.read_text())
    return {
        "docs_read": stats["docs_read"],
        "seconds": dt,
        "docs_per_s": stats["docs_read"] / dt,
        "train_tokens": sum(res.tokens["train"].values()),
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    return {
        k: (statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[0][k])
        for k in runs[0]
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scales", default="1,10")
    p.add_argument("--no-stage", action="store_true")
    p.add_argument("--child", nargs="+")
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        fn = {"ingest": child_ingest, "tokenize": child_tokenize, "stage": child_stage}[kind]
        print(json.dumps(fn(*map(Path, rest))))
        return

    from moemix.pipeline.demo_corpus import build_demo_corpus

    work = Path(tempfile.mkdtemp(prefix="bench_domains_"))
    try:
        cache = Path(os.environ.get("MOEMIX_CACHE", work / "cache")) / "demo_corpus"
        t0 = time.perf_counter()
        corpus = build_demo_corpus(cache)
        print(
            json.dumps(
                {
                    "bench": "demo_corpus",
                    "seconds_first_use": time.perf_counter() - t0,
                    "mb": corpus.total_bytes / 1e6,
                    "domains": len(corpus.domains),
                    "docs": sum(corpus.docs.values()),
                }
            ),
            flush=True,
        )
        for scale in [int(s) for s in a.scales.split(",")]:
            src = corpus.root if scale == 1 else make_scaled(corpus.root, work / f"x{scale}", scale)
            runs = []
            for r in range(a.repeats):
                runs.append(run_child("ingest", str(src), str(work / f"ingest_x{scale}_{r}")))
                shutil.rmtree(work / f"ingest_x{scale}_{r}", ignore_errors=True)
            print(
                json.dumps({"bench": "ingest", "scale": scale, "repeats": a.repeats, **median_of(runs)}),
                flush=True,
            )
            if scale != 1:
                shutil.rmtree(src, ignore_errors=True)
        if not a.no_stage:
            runs = [run_child("stage", str(cache), str(work / f"stage{r}")) for r in range(a.repeats)]
            print(
                json.dumps({"bench": "stage_label_demo", "repeats": a.repeats, **median_of(runs)}), flush=True
            )
            tok = work / "stage0" / "tokenizer.json"
            runs = [run_child("tokenize", str(corpus.root), str(tok)) for _ in range(a.repeats)]
            print(json.dumps({"bench": "tokenize", "repeats": a.repeats, **median_of(runs)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
