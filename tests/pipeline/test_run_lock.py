"""A run directory admits one pipeline at a time; a lock left by a killed run is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from moemix.errors import MoemixError
from moemix.pipeline.run_lock import RunLock

HOLD = """
import sys, time
from moemix.pipeline.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_with_the_holder_then_a_killed_holder_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(MoemixError, match=rf"in use by process {proc.pid} on .*; wait for it"):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with RunLock(tmp_path):  # the kernel dropped the dead holder's flock
        again = _holder_attempt(tmp_path)
    assert "in use by process" in again
    RunLock(tmp_path).acquire().release()  # released on exit


def _holder_attempt(run_dir) -> str:
    """What another process is told while this one holds the lock (one line, exit 2 from the CLI)."""
    code = (
        "import sys\nfrom moemix.pipeline.run_lock import RunLock\nfrom moemix.errors import MoemixError\n"
        "try:\n    RunLock(sys.argv[1]).acquire()\nexcept MoemixError as e:\n    print(e)\n    sys.exit(2)\n"
    )
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and time.time() - t0 < 60
    assert len(proc.stdout.strip().splitlines()) == 1
    return proc.stdout


def test_moemix_run_on_a_busy_run_dir_exits_2_with_one_line(tmp_path):
    proc = _holder(tmp_path)  # stands in for a pipeline that is running there
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "moemix.cli", "run", "--out", str(tmp_path), "--quiet"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert cli.returncode == 2
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("moemix: error: run directory") and f"process {proc.pid}" in lines[0]
    assert not (tmp_path / "config.resolved.yaml").exists()  # nothing written
