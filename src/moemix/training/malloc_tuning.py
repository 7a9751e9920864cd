"""Keep large CPU training buffers on the malloc heap instead of fresh mmaps.

Why: glibc serves every allocation above ``M_MMAP_THRESHOLD`` (dynamic, at most 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` on free. An MoE layer's dispatched activations
(``[T*k, 2f]`` fp32 is 35 MB on the fine-grained benchmark shape) cross that line, so every
training step page-faults its biggest buffers in again: on a 2-core box the first touch of such a
buffer costs ~27 ms against ~1.7 ms hot (a third of the grouped MoE layer's gap to a dense layer).
Raising the mmap threshold and the trim threshold lets the allocator reuse those pages across
steps. This is the same as exporting ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, but
works after the interpreter has started (a Ray worker, a notebook).

Only glibc has ``mallopt`` with these knobs; elsewhere (macOS, musl) this is a no-op. Set
``MOEMIX_MALLOC_TUNING=0`` to opt out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# 1 GiB covers every per-layer activation of the models this package trains on CPU; an explicit
# value also switches off glibc's dynamic threshold (checked on glibc 2.36: mallopt returns 1 and
# 48 MB tensors then come from brk, not mmap).
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = (1 << 31) - 1

OPT_OUT_ENV = "MOEMIX_MALLOC_TUNING"

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return None
    path = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(path)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_large_allocations_on_heap() -> bool:
    """Tune glibc malloc so large tensors are reused across steps; True when the tuning is active.

    Idempotent and process-wide; safe to call from every training entry point.
    """
    global _applied
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if _applied is not None:
        return _applied
    libc = _glibc()
    if libc is None:
        _applied = False
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    _applied = ok_mmap and ok_trim
    return _applied
