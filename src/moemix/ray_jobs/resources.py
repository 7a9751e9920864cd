"""What the Ray cluster can hold, checked before work is queued (kept free of torch and the configs:
the domains stage's workers import it)."""

from __future__ import annotations

import ray

from moemix.errors import MoemixError


def require_resources(what: str, cpus: float, gpus: float, hint: str) -> None:
    """Refuse at once, in one line, work that needs more CPUs or GPUs at a time than the whole cluster
    has: Ray would otherwise queue it forever without a word (a 1-CPU container, a typo in a config)."""
    res = ray.cluster_resources()
    have_cpu, have_gpu = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
    if cpus > have_cpu or gpus > have_gpu:
        need = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
        raise MoemixError(
            f"{what}: needs {need} at a time but the Ray cluster has {have_cpu:g} CPUs and "
            f"{have_gpu:g} GPUs; {hint}"
        )
