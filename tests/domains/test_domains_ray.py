"""The domains stage on Ray Data: the same bytes as in process with 1 and 2 workers, no hang on a 1-CPU
Ray, a one-line refusal when a worker cannot fit, bad inputs as one line, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moemix.domains.cluster import ClusterConfig
from moemix.domains.config import NearDedupConfig
from moemix.domains.embed import EmbedConfig
from moemix.domains.ingest import SourceConfig
from moemix.domains.stage import run_domains
from moemix.errors import MoemixError

REPO = Path(__file__).resolve().parents[2]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    assert any(k.endswith(".bin") for k in ta) and any(k.startswith("assignments/") for k in ta)
    for k in ta:
        assert ta[k] == tb[k], k


@pytest.fixture(scope="module")
def corpus(demo_subset, tmp_path_factory):
    """Two sources: the demo subset, and near and exact copies of some of its documents."""
    tmp = tmp_path_factory.mktemp("raycorpus")
    t = pq.read_table(demo_subset)
    rows = t.slice(0, 40).to_pydict()
    near = {
        "text": [x + " (mirror copy)" for x in rows["text"][:20]] + rows["text"][20:40],
        "id": [f"m{i}" for i in range(40)],
    }
    import pyarrow as pa

    pq.write_table(pa.table(near), tmp / "mirror.parquet")
    return [
        SourceConfig(path=str(demo_subset), id_column="id"),
        SourceConfig(path=str(tmp / "mirror.parquet"), id_column="id"),
    ]


def _cfg(small_cfg, sources, **kw):
    kw.setdefault("mode", "cluster")
    kw.setdefault(
        "cluster",
        ClusterConfig(
            n_domains=4,
            n_fine_clusters=16,
            sample_size=2000,
            min_domain_fraction=0.0,
            n_init=1,
            embed=EmbedConfig(dim=32, n_features=2**13),
        ),
    )
    return small_cfg(
        sources=sources,
        partitions=4,
        near_dedup=NearDedupConfig(enabled=True, threshold=0.7),
        max_docs_per_domain=120,
        **kw,
    )


@pytest.mark.slow
def test_ray_with_1_and_2_workers_writes_what_the_in_process_path_writes(
    ray_session, corpus, small_cfg, tmp_path
):
    from moemix.ray_jobs.data import ray_data_executor

    cfg = _cfg(small_cfg, corpus)
    local = run_domains(cfg, tmp_path / "local", seed=0, progress=False)
    stats = json.loads(local.stats_path.read_text())
    assert stats["near_duplicates_removed"] >= 15  # the mirrored documents
    assert stats["duplicates_removed"] >= 20
    assert stats["skipped"]["over_max_docs_per_domain"] > 0
    for n in (1, 2):
        run_domains(
            cfg, tmp_path / f"ray{n}", seed=0, executor=ray_data_executor(num_workers=n), progress=False
        )
        assert_same_tree(tmp_path / "local", tmp_path / f"ray{n}")


ONE_CPU = """
import json, sys, ray
from pathlib import Path
ray.init(num_cpus=1, object_store_memory=150 * 2**20, include_dashboard=False)
from moemix.configtools import from_dict
from moemix.domains.config import DomainsConfig
from moemix.domains.stage import run_domains
from moemix.errors import MoemixError
from moemix.ray_jobs.data import ray_data_executor
cfg = from_dict(DomainsConfig, json.loads(sys.argv[2]), "domains")
run_domains(cfg, Path(sys.argv[1]) / "one_cpu", executor=ray_data_executor(), progress=False)
print("finished")
try:
    run_domains(cfg, Path(sys.argv[1]) / "two", executor=ray_data_executor(cpus_per_worker=2), progress=False)
except MoemixError as e:
    print("refused:", e)
"""


@pytest.mark.slow
def test_a_one_cpu_ray_finishes_or_refuses_at_once(corpus, small_cfg, tmp_path):
    from moemix._io import to_jsonable

    cfg = _cfg(small_cfg, corpus)
    run_domains(cfg, tmp_path / "local", seed=0, progress=False)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", ONE_CPU, str(tmp_path), json.dumps(to_jsonable(cfg))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished" in proc.stdout
    assert "refused: domains (read): a worker: needs 2 CPUs at a time but the Ray cluster has 1 CPUs" in (
        proc.stdout
    )
    assert time.time() - start < 240
    assert_same_tree(tmp_path / "local", tmp_path / "one_cpu")


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing_column", r"x\.parquet: missing text column 'body'"),
        ("invalid_utf8", r"bad\.txt: none of its rows has usable text .*invalid_utf8=2"),
        ("empty", r"empty\.jsonl is empty"),
        ("hub_offline", r"cannot reach the Hugging Face hub for dataset someone/corpus: offline\?"),
        ("few_docs", r"6 documents, fewer than the 8 clusters"),
    ],
)
def test_bad_inputs_give_one_line_on_the_ray_path(ray_session, case, match, small_cfg, tmp_path, monkeypatch):
    import pyarrow as pa

    from moemix.ray_jobs.data import ray_data_executor

    pq.write_table(
        pa.table({"text": [f"doc {i} about topic {i % 3}" for i in range(6)]}), tmp_path / "x.parquet"
    )
    kw: dict = {}
    if case == "missing_column":
        src = SourceConfig(path=str(tmp_path / "x.parquet"), text_column="body")
    elif case == "invalid_utf8":
        (tmp_path / "bad.txt").write_bytes(b"\xff\xfe broken\n\xc3\x28 also\n")
        src = SourceConfig(path=str(tmp_path / "bad.txt"))
    elif case == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        src = SourceConfig(path=str(tmp_path / "empty.jsonl"))
    elif case == "hub_offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        src = SourceConfig(hub="someone/corpus")
    else:
        src = SourceConfig(path=str(tmp_path / "x.parquet"))
        kw = {"mode": "cluster", "cluster": ClusterConfig(n_domains=8, n_fine_clusters=8, sample_size=100)}
    cfg = small_cfg(sources=[src], **kw)
    with pytest.raises(MoemixError, match=match) as err:
        run_domains(cfg, tmp_path / "out", executor=ray_data_executor(num_workers=2), progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers", [1, 2])
def test_many_units_share_blocks_and_come_back_in_unit_order(ray_session, workers):
    """More units than blocks (read units are files: thousands on a real corpus): several ride in one
    Ray Data block, and every summary still comes back at its unit's place."""
    from moemix.ray_jobs.data import BLOCKS_PER_WORKER, ray_data_executor

    units = list(range(3 * BLOCKS_PER_WORKER * workers + 1))
    peaks: list = []
    out = ray_data_executor(num_workers=workers, worker_peaks=peaks)(hex, units, what="read")
    assert out == [hex(u) for u in units]
    assert len(peaks) == len(units)


SLOW_WRITES = """
import json, sys, time
from pathlib import Path
import moemix.domains.stage as stage
from moemix.configtools import from_dict
from moemix.domains.config import DomainsConfig
real = stage.write_partition
def slow(task):
    print("writing", task.partition, flush=True)
    time.sleep(1.0)
    return real(task)
stage.write_partition = slow
cfg = from_dict(DomainsConfig, json.loads(sys.argv[2]), "domains")
stage.run_domains(cfg, Path(sys.argv[1]), progress=False)
"""


@pytest.mark.slow
def test_kill_9_mid_stage_then_rerun_gives_the_uninterrupted_outputs(corpus, small_cfg, tmp_path):
    from moemix._io import to_jsonable

    cfg = _cfg(small_cfg, corpus)
    run_domains(cfg, tmp_path / "whole", seed=0, progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, str(out), json.dumps(to_jsonable(cfg))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in proc.stdout:  # kill once the second partition is being written
        lines.append(line)
        if line.startswith("writing 1"):
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, lines
    assert (out / "_work" / "write" / "p00000.done.pkl").exists()  # one partition was finished
    assert not (out / "stats.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("assignments/part-00000.parquet")}
    assert finished  # partition 0's outputs were written before the kill
    run_domains(cfg, out, seed=0, progress=False)
    # resumed, not redone: the finished partition's files are the ones written before the kill
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    assert not (out / "_work").exists()
    assert_same_tree(tmp_path / "whole", out)
