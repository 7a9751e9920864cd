"""The hand-written event files are what TensorBoard itself reads."""

from __future__ import annotations

import pytest

from moemix.training.tensorboard import ScalarWriter, crc32c


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value


def test_tensorboard_reads_the_scalars_back(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with ScalarWriter(tmp_path) as w:
        w.add(50, {"train/loss": 6.9, "train/lr": 0.002}, wall_time=1000.0)
        w.add(100, {"train/loss": 5.68, "train/lr": 0.003, "ignored": "text"}, wall_time=1001.0)
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [50, 100]
    assert [e.value for e in loss] == pytest.approx([6.9, 5.68], rel=1e-6)
    assert loss[1].wall_time == 1001.0
