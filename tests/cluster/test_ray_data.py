"""The Ray Data assign path writes exactly what the in-process path writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moemix.pipeline.cluster import ClusterConfig, assign_parquet, fit_cluster_model

sys.path.insert(0, str(Path(__file__).parent))
from corpus import labelled_corpus  # noqa: E402


@pytest.fixture(scope="module")
def model_and_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raydata")
    texts, _, names = labelled_corpus(120)
    texts = list(texts)
    model = fit_cluster_model(texts, ClusterConfig(n_domains=len(names), n_fine_clusters=24), seed=0)
    model.save(tmp / "model")
    files = []
    # uneven file sizes, an empty file, and small row groups so files span several Ray blocks
    for i, (a, b) in enumerate([(0, 300), (300, 300), (300, 317), (317, len(texts))]):
        f = tmp / "in" / f"part-{i}.parquet"
        f.parent.mkdir(exist_ok=True)
        pq.write_table(
            pa.table({"id": np.arange(a, b), "text": pa.array(texts[a:b], pa.string())}), f, row_group_size=50
        )
        files.append(f)
    return tmp, model, files, texts


def test_ray_assign_equals_in_process(ray_session, model_and_files):
    from moemix.ray_jobs.data import assign_parquet_ray

    tmp, model, files, texts = model_and_files
    local = assign_parquet(tmp / "model", files, tmp / "local", batch_size=64)
    remote = assign_parquet_ray(tmp / "model", files, tmp / "ray", num_actors=2, batch_size=64)
    assert [p.name for p in remote] == [p.name for p in local]
    for a, b in zip(local, remote):
        ta, tb = pq.read_table(a), pq.read_table(b)
        assert ta.schema.equals(tb.schema), (ta.schema, tb.schema)
        assert ta.equals(tb)
    got = pa.concat_tables([pq.read_table(p) for p in remote])
    assert got.column("text").to_pylist() == texts
    assert got.column("domain_id").to_numpy().tolist() == model.assign(texts).tolist()
    assert not list((tmp / "ray").glob(".*tmp"))


def test_ray_embed_parquet(ray_session, model_and_files):
    from moemix.ray_jobs.data import embed_parquet_ray

    tmp, model, files, texts = model_and_files
    out = embed_parquet_ray(tmp / "model", files[:2], tmp / "emb", num_actors=1, batch_size=100)
    t = pq.read_table(out[0])
    emb = np.array(t.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(emb, model.embedder.embed(texts[:300]))
    assert pq.read_table(out[1]).num_rows == 0


ONE_CPU = """
import sys, ray
from pathlib import Path
ray.init(num_cpus=1, object_store_memory=150 * 2**20, include_dashboard=False)
from moemix.ray_jobs.data import assign_parquet_ray
tmp = Path(sys.argv[1])
files = sorted((tmp / "in").glob("*.parquet"))
print("ok", len(assign_parquet_ray(tmp / "model", files, tmp / "one_cpu", batch_size=64)))
"""


@pytest.mark.slow
def test_assignment_finishes_on_a_one_cpu_ray(model_and_files):
    """With ray.num_cpus 1 the actor pool took the only CPU and the read tasks waited forever; now the
    same files come out, from the in-process path."""
    import subprocess

    tmp, _, files, _ = model_and_files
    local = assign_parquet(tmp / "model", files, tmp / "local1", batch_size=64)
    proc = subprocess.run(
        [sys.executable, "-c", ONE_CPU, str(tmp)], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0 and "ok 4" in proc.stdout, proc.stderr[-3000:]
    assert "fewer than 2 CPUs" in proc.stderr
    for a in local:
        assert pq.read_table(tmp / "one_cpu" / a.name).equals(pq.read_table(a))
