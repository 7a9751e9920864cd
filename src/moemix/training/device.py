"""Where training runs: device resolution and the autocast context of each precision."""

from __future__ import annotations

import logging

import torch

from moemix.errors import MoemixError

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MoemixError(f"device {device!r} requested but CUDA is not available")
    return dev


def make_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context training runs its forward under: bf16 over fp32 master weights, or off."""
    bf16 = precision == "bf16"
    if bf16 and device.type == "cpu" and not _cpu_has_native_bf16():
        log.warning(
            "precision bf16 on a CPU without native bf16 matmuls (AVX512-BF16/AMX): it is emulated "
            "and likely slower than fp32"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
