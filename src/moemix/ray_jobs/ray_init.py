"""Starting or attaching to Ray: the one switch between a laptop and a cluster.

Inside a Ray job (``moemix submit``) or with RAY_ADDRESS set, ``ray.init()`` attaches to the existing
cluster; otherwise a single-node Ray is started with an explicitly sized object store, because Ray's
default (30% of RAM) is far more than small machines can spare next to training.
"""

from __future__ import annotations

import logging
import os

import ray

from moemix.pipeline.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> bool:
    """Initialise Ray per ``cfg``. Returns True when this call started it (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers must import moemix from the same tree as the driver (editable installs, tests).
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if address:
        log.info("attaching to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.num_cpus or os.cpu_count() or 1,
            object_store_memory=cfg.object_store_memory_mb * 1024 * 1024,
            include_dashboard=cfg.include_dashboard,
            log_to_driver=False,
            configure_logging=False,
        )
    return True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))
