"""Tiny shapes: one intra-op thread avoids OpenMP spin contention with the other test workers on a
shared 2-core box (2 threads was ~50x slower for the tiny model under load)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
