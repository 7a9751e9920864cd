"""The domains stage's executor on Ray Data: its work units (read units, hash partitions) run as Ray
Data tasks, at most one per worker's CPU share (and GPUs for the route step, where a sentence-transformers
embedder runs), each reading and writing its own files.

Tasks, not an actor pool per step: Ray keeps the worker processes between steps, so a step costs
~0.2 s of scheduling instead of ~1.9 s of starting and stopping a pool (measured with no-op units on
2 CPUs), and the models and tokenizer a worker loaded stay cached for its next unit. A reused process
carries its memory from step to step; with Arrow on the system allocator and Parquet read without
pre-buffering (``moemix._io.streaming_parquet``) that carry-over stays flat as the corpus grows
(docs/benchmarks/domains.md).

Only summaries travel: a unit's inputs and outputs are files under the stage directory (shared storage
on a cluster), so the driver never streams documents, and Ray Data's backpressure only ever holds a few
pickled task descriptions. Results come back in unit order whatever the pool size, which, with units
that fix their own outputs, makes 1 worker and N workers write identical bytes.

Ray must already be initialised by the caller (``moemix.ray_jobs.ray_init.init_ray`` or a test fixture).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray
from ray import cloudpickle

from moemix.domains.units import Executor, call_unit, limit_threads
from moemix.errors import MoemixError
from moemix.ray_jobs.resources import require_resources

log = logging.getLogger(__name__)


def run_units(batch: pa.Table, threads: int) -> pa.Table:
    """A Ray Data task: runs each pickled ``(fn, unit)`` row, returns the pickled summaries."""
    limit_threads(threads)  # idempotent; before the tokenizer's or BLAS's thread pools first start
    out = [cloudpickle.dumps(call_unit(*cloudpickle.loads(b))) for b in batch.column("unit").to_pylist()]
    # this worker's peak RSS so far (KiB on Linux): what a benchmark checks stays flat
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return pa.table(
        {
            "i": batch.column("i"),
            "result": pa.array(out, pa.binary()),
            "peak_rss_kib": pa.array([peak] * len(out), pa.int64()),
        }
    )


# The env of the domains stage's worker processes (a task's runtime env gives it processes of its own,
# started with it). Arrow's C++ reads this variable at its first allocation: the Parquet reader's
# buffers come from Arrow's C++ default pool, which ``pa.set_memory_pool`` (in ``limit_threads``) does
# not change. Under mimalloc that pool kept a 1 GiB arena whose resident part grew with the rows
# streamed (one partition's dedup read: 192 MB peak at 10x the corpus vs 152 MB; system: 132 vs 122 MB).
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}

# blocks of units per worker: enough that a worker which drew the small units takes more, few enough
# that the per-block cost stays a small share of the step
BLOCKS_PER_WORKER = 4


def pool_size(n_units: int, num_workers: int | None, cpus: float, gpus: float, what: str) -> int:
    """How many actors: what was asked for, capped by the units and by what the cluster has. A cluster
    that cannot run even one is refused at once, in one line, rather than waited on forever."""
    require_resources(
        f"domains ({what}): a worker",
        cpus,
        gpus,
        "lower domains.cpus_per_worker / gpus_per_worker, or use a bigger cluster",
    )
    res = ray.cluster_resources()
    have_cpu, have_gpu = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
    fit = int(have_cpu // cpus)
    if gpus > 0:
        fit = min(fit, int(have_gpu // gpus))
    return max(1, min(n_units, num_workers or fit, fit))


def ray_data_executor(
    num_workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    worker_peaks: list[tuple[str, int]] | None = None,
) -> Executor:
    """An executor for ``moemix.domains.stage.run_domains``; GPUs go to the route step only.
    ``worker_peaks`` (optional) receives (step, peak RSS in KiB of the worker that ran it) per unit."""

    def run(fn: Callable[[Any], Any], units: list[Any], *, what: str = "") -> list[Any]:
        if not units:
            return []
        if not ray.is_initialized():
            raise MoemixError("ray: not initialised; call moemix.ray_jobs.ray_init.init_ray first")
        gpus = gpus_per_worker if what == "route" else 0.0
        size = pool_size(len(units), num_workers, cpus_per_worker, gpus, what)
        ctx = ray.data.DataContext.get_current()
        old_progress = ctx.enable_progress_bars
        ctx.enable_progress_bars = False
        try:
            # Ray Data pays its scheduling cost per block (~50 ms on a busy driver, serial on the
            # driver), so thousands of small read units go in a few blocks per worker. Units arrive
            # biggest first; dealing them round-robin into the blocks keeps the blocks' work even.
            n_blocks = min(len(units), size * BLOCKS_PER_WORKER)
            order = [i for b in range(n_blocks) for i in range(b, len(units), n_blocks)]
            items = [{"i": i, "unit": cloudpickle.dumps((fn, units[i]))} for i in order]
            ds = ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
                run_units,
                fn_kwargs={"threads": max(1, int(cpus_per_worker))},
                concurrency=size,
                batch_size=1,
                batch_format="pyarrow",
                num_cpus=cpus_per_worker,
                num_gpus=gpus,
                runtime_env={"env_vars": WORKER_ENV},
            )
            rows = ds.take_all()
        finally:
            ctx.enable_progress_bars = old_progress
        if len(rows) != len(units):
            raise MoemixError(
                f"domains ({what}): {len(rows)} of {len(units)} work units came back from Ray Data"
            )
        log.info("domains: %s: %d units on %d Ray Data workers", what, len(units), size)
        if worker_peaks is not None:
            worker_peaks.extend((what, int(r["peak_rss_kib"])) for r in rows)
        return [cloudpickle.loads(r["result"]) for r in sorted(rows, key=lambda r: r["i"])]

    return run
