"""Independent blocking jobs (one Ray Train run each) run side by side, as many as the cluster holds.

The pretrain comparison trains the chosen, uniform and natural mixtures on the same budget; nothing ties
one run to another, so on a cluster with room for several they should not queue behind each other. Each
``TorchTrainer.fit`` blocks its caller until the run ends, so each runs in a thread of the driver (Ray Train
supports fit outside the main thread, as Ray Tune calls it). The threads are daemons: a Ctrl-C or a crash
of the driver does not wait for them, Ray stops the runs with the driver that owns them, and a re-run
resumes each from its checkpoints.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def runs_at_once(
    n_runs: int,
    cpus_per_run: float,
    gpus_per_run: float,
    free: Mapping[str, float],
    max_at_once: int = 0,
) -> int:
    """How many runs to start together: as many as ``free`` CPUs and GPUs hold (at least one, which Ray
    queues until there is room), at most ``max_at_once`` when that is positive."""
    fits = [math.floor(float(free.get("CPU", 0.0)) / cpus_per_run)] if cpus_per_run > 0 else []
    if gpus_per_run > 0:
        fits.append(math.floor(float(free.get("GPU", 0.0)) / gpus_per_run))
    at_once = max(1, min([n_runs, *fits]))
    return min(at_once, max_at_once) if max_at_once > 0 else at_once


def run_side_by_side(jobs: Mapping[str, Callable[[], None]], at_once: int, what: str = "run") -> None:
    """Call every job, at most ``at_once`` at a time, in the order given.

    After a job raises, no further job starts; the ones already running are waited for (their work is
    kept), then the first failure is raised.
    """
    pending = list(jobs.items())
    finished: queue.Queue[str] = queue.Queue()
    errors: list[tuple[str, BaseException]] = []
    running: set[str] = set()

    def call(name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # handed to the caller's thread below
            errors.append((name, e))
        finally:
            finished.put(name)

    while pending or running:
        while pending and len(running) < at_once and not errors:
            name, job = pending.pop(0)
            running.add(name)
            threading.Thread(target=call, args=(name, job), name=f"{what}-{name}", daemon=True).start()
        if not running:
            break
        try:
            name = finished.get(timeout=1.0)  # a timeout keeps Ctrl-C responsive
        except queue.Empty:
            continue
        running.discard(name)
        if running and errors and errors[0][0] == name:
            log.info("%s %s failed; waiting for %s to finish", what, name, ", ".join(sorted(running)))
    if errors:
        raise errors[0][1]
