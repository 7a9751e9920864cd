"""The proxy swarm on Ray: one task per unfinished proxy, gathered as they finish.

Failure model:
* a proxy that *raises* is retried inside its task (``transient_retries``, see
  ``moemix.proxies.run.run_proxy``) and, if it keeps failing, writes a ``failed`` result itself;
* a task whose *worker dies* (OOM kill, lost node) is re-run by Ray (``max_retries``); if Ray gives
  up, the driver writes the ``failed`` result, so no proxy is ever silently missing from the runs
  table.
Resumability comes from the result files: specs whose ``result.json`` says ``ok`` are not submitted.

Ray is initialised by the caller (pipeline: ``moemix.ray_jobs.ray_init``; tests: ``ray_session``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ray

from moemix.proxies.run import ProxyResult, ProxySpec, is_complete, load_result, record_failure, run_proxy
from moemix.ray_jobs.resources import require_resources

log = logging.getLogger(__name__)


def _proxy_task(spec: ProxySpec, num_threads: int, transient_retries: int) -> ProxyResult:
    import torch

    # Ray sets OMP_NUM_THREADS=num_cpus for the worker, but torch may already have sized its
    # pool; pin it so N tasks on N cores never oversubscribe.
    torch.set_num_threads(max(1, num_threads))
    return run_proxy(spec, transient_retries=transient_retries)


_remote_proxy = ray.remote(_proxy_task)


def run_swarm(
    specs: Sequence[ProxySpec],
    num_cpus_per_proxy: float = 1.0,
    num_gpus_per_proxy: float = 0.0,
    max_retries: int = 2,
    transient_retries: int = 1,
    progress: bool = True,
) -> list[ProxyResult]:
    """Run every unfinished spec as a Ray task; returns results in ``specs`` order (done ones included)."""
    if not ray.is_initialized():
        raise RuntimeError("run_swarm needs Ray to be initialised by the caller (moemix.ray_jobs.ray_init)")
    results: dict[str, ProxyResult] = {}
    pending: dict[Any, ProxySpec] = {}
    todo = []
    for spec in specs:
        if spec.run_id in results or any(s.run_id == spec.run_id for s in todo):
            continue  # duplicate mixture: one run serves both
        if is_complete(spec):
            results[spec.run_id] = load_result(spec)
        else:
            todo.append(spec)
    if todo:
        require_resources(
            "proxies",
            num_cpus_per_proxy,
            num_gpus_per_proxy,
            "lower proxies.num_cpus_per_proxy / num_gpus_per_proxy, or use a bigger cluster",
        )
    threads = max(1, int(num_cpus_per_proxy))
    task = _remote_proxy.options(
        num_cpus=num_cpus_per_proxy,
        num_gpus=num_gpus_per_proxy,
        max_retries=max_retries,
        retry_exceptions=False,  # exceptions are retried inside the task, crashes by Ray
    )
    for spec in todo:
        pending[task.remote(spec, threads, transient_retries)] = spec
    log.info("swarm: %d proxies, %d already done, %d submitted", len(specs), len(results), len(todo))

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="proxies", unit="run")
    n_failed = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            spec = pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as e:  # worker death after all Ray retries
                res = record_failure(spec, f"{type(e).__name__}: {e}", attempts=max_retries + 1)
            results[spec.run_id] = res
            n_failed += res.status != "ok"
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=n_failed)
    if bar is not None:
        bar.close()
    if n_failed:
        log.warning(
            "swarm: %d of %d submitted proxies failed (recorded in their result.json)", n_failed, len(todo)
        )
    return [results[s.run_id] for s in specs]
