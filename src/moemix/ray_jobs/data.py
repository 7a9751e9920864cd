"""Ray Data versions of the cluster-mode streaming steps (assign, embed).

A pool of actors each loads the saved ``ClusterModel`` once (embedder projection, fine centroids, or a
sentence-transformers model on a GPU) and maps parquet batches; the driver streams the results back in
input order (``preserve_order``) and cuts them into one output file per input file, so the output is
row-for-row identical to the in-process ``moemix.pipeline.cluster.assign_parquet``.

Ray must already be initialised by the caller (``moemix.ray_jobs.ray_init.init_ray`` or a test fixture).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from moemix.errors import MoemixError
from moemix.pipeline.cluster import (
    ClusterModel,
    add_domain_column,
    assign_parquet,
    domain_schema,
    output_names,
)

log = logging.getLogger(__name__)


class AssignActor:
    """Loads the cluster model once; maps a pyarrow batch to the same batch plus ``domain_id``."""

    def __init__(self, model_dir: str, text_column: str = "text") -> None:
        self.model = ClusterModel.load(Path(model_dir))
        self.text_column = text_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        ids = self.model.assign([t or "" for t in texts]).astype(np.int32)
        return add_domain_column(batch, ids)


class EmbedActor:
    """Loads the fitted embedder once; maps a batch to the same batch plus an ``embedding`` column."""

    def __init__(self, model_dir: str, text_column: str = "text") -> None:
        self.embedder = ClusterModel.load(Path(model_dir)).embedder
        self.text_column = text_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        emb = self.embedder.embed([t or "" for t in texts])
        col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1])
        if "embedding" in batch.schema.names:
            batch = batch.drop_columns(["embedding"])
        return batch.append_column("embedding", col)


# assign_parquet_ray and embed_parquet_ray share a signature on purpose: they are the two public Ray Data
# entry points (each documented for its own use) over the one implementation, _map_parquet
def assign_parquet_ray(
    model_dir: Path,
    in_files: list[Path],
    out_dir: Path,
    num_actors: int | None = None,
    batch_size: int = 1024,
    num_gpus_per_actor: float = 0,
    *,
    text_column: str = "text",
) -> list[Path]:
    """Ray Data twin of ``assign_parquet``: same files, same rows, same ``domain_id`` values.

    On a Ray with fewer than 2 CPUs (a 1-CPU container) and no GPU actors, Ray Data cannot run the
    assignment actor and the read tasks that feed it at once: its read operator starves and the
    pipeline waits forever. There the in-process ``assign_parquet`` runs instead (identical outputs)."""
    if ray.is_initialized() and num_gpus_per_actor == 0 and ray.cluster_resources().get("CPU", 0) < 2:
        log.warning("assign: Ray has fewer than 2 CPUs; assigning in this process instead of on Ray Data")
        return assign_parquet(model_dir, in_files, out_dir, batch_size, text_column=text_column)
    return _map_parquet(
        AssignActor,
        domain_schema,
        model_dir,
        in_files,
        out_dir,
        num_actors,
        batch_size,
        num_gpus_per_actor,
        text_column,
    )


def embed_parquet_ray(
    model_dir: Path,
    in_files: list[Path],
    out_dir: Path,
    num_actors: int | None = None,
    batch_size: int = 1024,
    num_gpus_per_actor: float = 0,
    *,
    text_column: str = "text",
) -> list[Path]:
    """Embed with the model's fitted embedder (worth it for sentence-transformers on GPUs): the input rows
    plus a fixed-size float32 list column ``embedding``, one output file per input file."""
    dim = ClusterModel.load(Path(model_dir)).embedder.dim

    def schema_fn(schema: pa.Schema) -> pa.Schema:
        if "embedding" in schema.names:
            schema = schema.remove(schema.get_field_index("embedding"))
        return schema.append(pa.field("embedding", pa.list_(pa.float32(), dim)))

    return _map_parquet(
        EmbedActor,
        schema_fn,
        model_dir,
        in_files,
        out_dir,
        num_actors,
        batch_size,
        num_gpus_per_actor,
        text_column,
    )


def _default_actors(num_gpus_per_actor: float) -> int:
    res = ray.cluster_resources()
    if num_gpus_per_actor > 0:
        return max(1, int(res.get("GPU", 0) // num_gpus_per_actor))
    # leave a CPU for the read tasks that feed the actors
    return max(1, int(res.get("CPU", 1)) - 1)


def _map_parquet(
    actor_cls: type,
    schema_fn: Callable[[pa.Schema], pa.Schema],
    model_dir: Path,
    in_files: list[Path],
    out_dir: Path,
    num_actors: int | None,
    batch_size: int,
    num_gpus_per_actor: float,
    text_column: str,
) -> list[Path]:
    if not ray.is_initialized():
        raise MoemixError("ray: not initialised; call moemix.ray_jobs.ray_init.init_ray first")
    in_files = [Path(f) for f in in_files]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ClusterModel.load(Path(model_dir))  # fail here, in one line, rather than inside every actor
    schemas, counts = [], []
    for f in in_files:
        pf = pq.ParquetFile(f)
        if text_column not in pf.schema_arrow.names:
            raise MoemixError(f"{f}: no column {text_column!r} (columns: {', '.join(pf.schema_arrow.names)})")
        schemas.append(schema_fn(pf.schema_arrow))
        counts.append(pf.metadata.num_rows)
    out_paths = [out_dir / n for n in output_names(in_files)]
    n_actors = num_actors or _default_actors(num_gpus_per_actor)

    ctx = ray.data.DataContext.get_current()
    old_order, old_progress = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True  # rows come back in input order -> per-file cutting works
    ctx.enable_progress_bars = False
    writer: _OrderedWriter | None = None
    try:
        nonempty = [str(f) for f, c in zip(in_files, counts) if c > 0]
        writer = _OrderedWriter(out_paths, schemas, counts)
        if nonempty:
            ds = ray.data.read_parquet(nonempty, partitioning=None).map_batches(
                actor_cls,
                fn_constructor_kwargs={"model_dir": str(model_dir), "text_column": text_column},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_actors),
                batch_size=batch_size,
                batch_format="pyarrow",
                num_gpus=num_gpus_per_actor,
                num_cpus=0 if num_gpus_per_actor > 0 else 1,
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.write(batch)
        writer.finish()
    finally:
        ctx.execution_options.preserve_order = old_order
        ctx.enable_progress_bars = old_progress
        if writer is not None:
            writer.cleanup()
    return out_paths


class _OrderedWriter:
    """Cuts one in-order stream of rows into per-input-file outputs, each written to a temp name and
    renamed into place only when complete."""

    def __init__(self, paths: list[Path], schemas: list[pa.Schema], counts: list[int]) -> None:
        self.paths, self.schemas, self.counts = paths, schemas, counts
        self.i = -1
        self.left = 0
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None
        self.tmps: list[Path] = []
        self._advance()

    def _open(self, i: int) -> None:
        self.tmp = self.paths[i].with_name(f".{self.paths[i].name}.{os.getpid()}.tmp")
        self.tmps.append(self.tmp)
        self.writer = pq.ParquetWriter(self.tmp, self.schemas[i])

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.paths[self.i])
            self.writer = None

    def _advance(self) -> None:
        """Finish the current file and open the next; zero-row files are written (empty) on the way."""
        self._close()
        self.i += 1
        while self.i < len(self.paths) and self.counts[self.i] == 0:
            self._open(self.i)
            self._close()
            self.i += 1
        if self.i < len(self.paths):
            self._open(self.i)
            self.left = self.counts[self.i]

    def write(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self.i >= len(self.paths):
                raise MoemixError("ray data: more rows came back than the input files hold")
            take = min(self.left, table.num_rows - start)
            part = table.slice(start, take).select(self.schemas[self.i].names).cast(self.schemas[self.i])
            self.writer.write_table(part)
            start += take
            self.left -= take
            if self.left == 0:
                self._advance()

    def finish(self) -> None:
        if self.i < len(self.paths):
            raise MoemixError(
                f"ray data: {self.paths[self.i].name} got {self.counts[self.i] - self.left} of "
                f"{self.counts[self.i]} rows"
            )

    def cleanup(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        for t in self.tmps:
            if t.exists():
                t.unlink()
