"""The pipeline's pretraining on 2 Ray Train workers (FSDP2): a worker killed mid-run is restarted by
FailureConfig and the run resumes from its last registered checkpoint instead of starting over."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from moemix.pipeline.config import PretrainConfig, load_config
from moemix.training.checkpoint import latest_checkpoint, read_trainer_state
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig

MIX = {"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}


def train_worker_pids() -> list[int]:
    """Ray Train worker processes on this machine (their process title names the actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_one_worker_after(ckpt_dir: Path, step: int, killed: list[int], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (ckpt_dir / "latest").exists():
            path = latest_checkpoint(ckpt_dir)
            if path is not None and read_trainer_state(path)["step"] >= step:
                pids = train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
                    return
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_resumes(ray_session, markov_tokens, tmp_path):
    from moemix.ray_jobs.pretrain import pretrain_mixtures

    model = dataclasses.replace(
        load_config().pretrain.model, vocab_size=64, n_layers=2, d_model=64, d_expert=64
    )
    pcfg = PretrainConfig(
        model=model,
        train=TrainConfig(
            steps=60, batch_size=8, seq_len=64, lr=3e-3, log_every=5, measure_mfu=False, num_threads=1
        ),
        num_workers=2,
        cpus_per_worker=1,
        checkpoint_every=10,
    )
    out = tmp_path / "pretrain"
    killed: list[int] = []
    killer = threading.Thread(target=kill_one_worker_after, args=(out / "chosen" / "checkpoints", 20, killed))
    killer.start()
    res = pretrain_mixtures(pcfg, TargetConfig(), {"chosen": MIX}, markov_tokens, {"chosen": out / "chosen"})[
        "chosen"
    ]
    killer.join()
    assert killed, "no worker was killed: the test did not exercise a failure"
    assert res["resumed_from_step"] >= 20  # restarted from a checkpoint, not from scratch
    steps = [json.loads(ln)["step"] for ln in (out / "chosen" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 60
    assert res["tokens"] == 60 * 8 * 64
