"""The pretrain comparison's runs train side by side when the cluster holds several (no Ray here: the
scheduling is plain threads over blocking jobs; the Ray Train runs themselves are in the end-to-end tests)."""

from __future__ import annotations

import threading
import time

import pytest

from moemix.ray_jobs.at_once import run_side_by_side, runs_at_once


def test_as_many_runs_as_the_free_resources_hold():
    assert runs_at_once(3, 2.0, 0, {"CPU": 2.0}) == 1  # the demo: two 1-CPU workers on 2 cores
    assert runs_at_once(3, 1.0, 0, {"CPU": 2.0}) == 2
    assert runs_at_once(3, 1.0, 0, {"CPU": 64.0}) == 3  # never more than there are runs
    assert runs_at_once(3, 8.0, 8, {"CPU": 256.0, "GPU": 16.0}) == 2  # GPUs bound it
    assert runs_at_once(3, 8.0, 8, {"CPU": 256.0}) == 1  # none free now: one, which Ray queues
    assert runs_at_once(3, 1.0, 0, {"CPU": 64.0}, max_at_once=1) == 1


class _Recorder:
    """Jobs that note how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.started: list[str] = []
        self.finished: list[str] = []

    def job(self, name: str, seconds: float = 0.2, fail: bool = False):
        def run() -> None:
            with self.lock:
                self.started.append(name)
                self.now += 1
                self.peak = max(self.peak, self.now)
            time.sleep(seconds)
            with self.lock:
                self.now -= 1
                self.finished.append(name)
            if fail:
                raise RuntimeError(f"{name} broke")

        return run


@pytest.mark.parametrize("at_once", [1, 2, 3])
def test_runs_overlap_up_to_the_limit_and_all_finish(at_once):
    rec = _Recorder()
    run_side_by_side({n: rec.job(n) for n in ("chosen", "uniform", "natural")}, at_once)
    assert rec.peak == at_once
    assert sorted(rec.finished) == ["chosen", "natural", "uniform"]
    assert rec.started[0] == "chosen"  # in the order given


def test_a_failure_starts_nothing_more_waits_for_the_running_and_is_raised():
    rec = _Recorder()
    jobs = {
        "chosen": rec.job("chosen", seconds=0.1, fail=True),
        "uniform": rec.job("uniform", seconds=0.6),
        "natural": rec.job("natural"),
    }
    with pytest.raises(RuntimeError, match="chosen broke"):
        run_side_by_side(jobs, 2)
    assert rec.finished == ["chosen", "uniform"]  # the running one was waited for
    assert "natural" not in rec.started
