"""glibc malloc tuning: large tensors are reused across steps instead of re-faulted from fresh mmaps.

Each check runs in a child process: the tuning is process-wide and would leak into other tests.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only"
)

# a training loop in miniature: each "step" allocates, touches and frees a 48 MB activation, with
# small temporaries in between. Prints whether tuning is on and the mean page faults of the
# last four steps: glibc's default mmaps the block afresh each step (~12k 4 KiB pages fault in),
# the tuned heap reuses it once the first steps have grown it.
_CHILD = """
import resource, sys, torch
from moemix.training.malloc_tuning import keep_large_allocations_on_heap
on = keep_large_allocations_on_heap() if sys.argv[1] == "tune" else False
again = keep_large_allocations_on_heap() if sys.argv[1] == "tune" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
log = []
for step in range(10):
    if step == 6:
        f0 = faults()
    a = torch.empty(12 * 1024 * 1024)
    a.fill_(float(step))
    small = torch.zeros(step + 1) + a[:8].sum()
    log.append(float(small.sum()))
    del a, small
print(on, again, (faults() - f0) // 4)
"""


def _run(mode: str, **env: str) -> tuple[bool, bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    ).stdout.split()
    return out[0] == "True", out[1] == "True", int(out[2])


@glibc_only
def test_tuning_reuses_large_buffers_instead_of_faulting():
    on, again, tuned_faults = _run("tune")
    assert on and again  # active, and idempotent
    _, _, default_faults = _run("default")
    assert default_faults > 5000  # glibc mmaps a 48 MB block afresh: ~12k 4 KiB pages fault in
    assert (
        tuned_faults <= default_faults / 4 + 64
    )  # heap growth may re-fault one step in four, not every step


def test_opt_out_env_disables_tuning():
    on, _, _ = _run("tune", MOEMIX_MALLOC_TUNING="0")
    assert not on
