"""One pipeline at a time per run directory.

``RunLock(run_dir)`` takes an exclusive ``flock`` on ``RUN_DIR/.moemix.lock`` for as long as the run
lasts and writes the holder (pid, host, start time) into it. A second run on the same directory fails
at once with one line naming the holder. The kernel drops a flock when its process dies, even by
``kill -9``, so a lock left by a killed run is simply taken over: no stale-lock heuristics.

``flock`` is advisory and per host on most network filesystems; runs started from different machines
on one shared directory are not serialised by it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from moemix.errors import MoemixError

LOCK_NAME = ".moemix.lock"


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise MoemixError(
                f"run directory {self.path.parent} is in use by {holder}; wait for it to finish or use "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        )
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no holder recorded: `moemix status` reads the run dir as free
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"process {info['pid']} on {info['host']} (since {since})"
    except (OSError, ValueError, KeyError):
        return "another moemix process"
