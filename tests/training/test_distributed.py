"""FSDP2 on 2 gloo ranks against 1 process, sharded memory, micro-batches, and resharding resume.

The model is the demo preset's pretrain model (d_model 96, 3 layers, 8 experts top-2) on the Markov
test domains; every distributed run is real processes talking gloo, as on a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moemix.pipeline.config import load_config
from moemix.training.checkpoint import latest_checkpoint, read_trainer_state
from moemix.training.config import TrainConfig
from moemix.training.loop import train

HERE = Path(__file__).parent
MIX = {"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}


def demo_pretrain_model(vocab_size: int = 64, **kw):
    # aux_loss_scope global: the Switch loss over the global batch's expert counts, the same on any number
    # of ranks ("micro", the preset's, is per forward by definition, so 2 ranks optimise a different sum)
    return dataclasses.replace(
        load_config().pretrain.model, vocab_size=vocab_size, **{"aux_loss_scope": "global", **kw}
    )


def cfg(**kw) -> TrainConfig:
    base = dict(
        steps=20,
        batch_size=16,
        seq_len=128,
        lr=3e-3,
        warmup_frac=0.25,
        log_every=1,
        measure_mfu=False,
        num_threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, spec: dict, world: int, tag: str) -> list[subprocess.Popen]:
    spec_path = tmp / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    port = str(_port())
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "dist_run.py"),
                str(spec_path),
                str(r),
                str(world),
                port,
                str(tmp / f"{tag}.out"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]


def finish(procs: list[subprocess.Popen], tmp: Path, tag: str, timeout: float = 300) -> list[dict]:
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out.decode()[-3000:]
    return [json.loads((tmp / f"{tag}.out.{r}").read_text()) for r in range(len(procs))]


def run_job(tmp: Path, spec: dict, world: int, tag: str) -> list[dict]:
    return finish(launch(tmp, spec, world, tag), tmp, tag)


def spec(tokens: Path, train_cfg: TrainConfig, **extra) -> dict:
    return {
        "tokens": str(tokens),
        "model": dataclasses.asdict(demo_pretrain_model()),
        "train": dataclasses.asdict(train_cfg),
        "mixture": MIX,
        **extra,
    }


def rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def single(markov_tokens, tmp_path_factory):
    """The reference: the same 20 steps in one process."""
    tmp = tmp_path_factory.mktemp("single")
    return run_job(tmp, spec(markov_tokens, cfg()), 1, "single")[0]


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_and_halve_memory(markov_tokens, single, tmp_path):
    ranks = run_job(tmp_path, spec(markov_tokens, cfg()), 2, "fsdp")
    # the logged loss is the global batch's mean on every rank
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert len(single["losses"]) == 20
    assert rel_diff(ranks[0]["losses"], single["losses"]) <= 1e-4
    assert single["losses"][-1] < single["losses"][0] - 0.5  # it trained
    # the model gathered from the shards is the one-process model
    for k, v in single["state"].items():
        assert ranks[0]["state"][k] == pytest.approx(v, rel=1e-3, abs=1e-3), k
    assert "state" not in ranks[1]  # only rank 0 holds the whole model
    for r in ranks:  # each rank holds about half the parameters and optimizer state
        mine = r["param_bytes"] + r["optimizer_bytes"]
        assert mine <= 0.55 * (single["param_bytes"] + single["optimizer_bytes"]), r


@pytest.mark.slow
def test_hsdp_replicate_mesh_matches_too(markov_tokens, single, tmp_path):
    """dp_replicate 2 x dp_shard 1: plain data parallelism through the same seam (no sharding)."""
    ranks = run_job(tmp_path, spec(markov_tokens, cfg(), parallel={"dp_replicate": 2}), 2, "ddp")
    assert rel_diff(ranks[0]["losses"], single["losses"]) <= 1e-4
    assert ranks[0]["param_bytes"] == single["param_bytes"]  # replicated, not sharded


@pytest.mark.slow
def test_router_biases_stay_identical_on_every_rank(markov_tokens, tmp_path):
    """Aux-loss-free balancing: the bias update comes from counts summed over ranks, so no rank drifts,
    and it is the one-process update."""
    aux_free = {**dataclasses.asdict(demo_pretrain_model()), "balance": "aux_free"}
    s = {**spec(markov_tokens, cfg(steps=10)), "model": aux_free}
    one = run_job(tmp_path, s, 1, "one")[0]
    two = run_job(tmp_path, s, 2, "two")
    assert two[0]["router_bias"] == two[1]["router_bias"]
    assert any(v != 0 for layer in one["router_bias"] for v in layer)  # the biases did move
    assert rel_diff(two[0]["losses"], one["losses"]) <= 1e-4
    # the update is a sign: one token routed the other way (the two runs agree to 1e-4, not bit for bit,
    # and where an expert's load sits at the mean that one token is a whole step) moves one bias by a
    # step or two. Allow that for one or two of the 24; a different or missing update moves most of them
    rate = aux_free["bias_update_rate"]
    diffs = [abs(a - b) for la, lb in zip(two[0]["router_bias"], one["router_bias"]) for a, b in zip(la, lb)]
    assert max(diffs) <= 2 * rate + 1e-6
    assert sum(d > 1e-6 for d in diffs) <= 2


@pytest.mark.parametrize("balance,scope", [("aux", "global"), ("aux_free", "micro")])
def test_micro_batches_equal_one_batch(markov_data, balance, scope):
    """4 micro-batches of 4 == one batch of 16: same losses, same weights, same router biases."""
    model = demo_pretrain_model(balance=balance, aux_loss_scope=scope)
    whole = train(model, cfg(steps=6), markov_data, MIX)
    micro = train(model, cfg(steps=6, micro_batch_size=4), markov_data, MIX)
    assert rel_diff([h["loss"] for h in micro.history], [h["loss"] for h in whole.history]) <= 1e-5
    assert [h["aux_loss"] for h in micro.history] == pytest.approx(
        [h["aux_loss"] for h in whole.history], abs=1e-6
    )
    # Adam and clipping are blind to a wrong accumulation scale; the gradient norm is not
    assert [h["grad_norm"] for h in micro.history] == pytest.approx(
        [h["grad_norm"] for h in whole.history], rel=1e-4
    )
    # Adam divides by sqrt(v): float-rounding differences of near-zero gradients become ~1% of one step
    for (k, a), b in zip(whole.model.state_dict().items(), micro.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=5e-5, msg=k)


def test_global_aux_loss_needs_the_whole_steps_counts(markov_data):
    """Without the counting pass (micro-batch m seeing only 1..m), 4 x 4 would not equal 16: the test
    above would catch a loop that dropped it."""
    model = demo_pretrain_model(balance="aux", aux_loss_coef=1.0)
    whole = train(model, cfg(steps=1), markov_data, MIX)

    class NoCountingPass(type(whole.model)):
        def begin_global_batch(self, micro_batches=()):
            super().begin_global_batch(())

    partial = train(model, cfg(steps=1, micro_batch_size=4), markov_data, MIX, model_factory=NoCountingPass)
    assert abs(partial.history[0]["aux_loss"] - whole.history[0]["aux_loss"]) > 1e-4


def test_micro_batch_must_divide_the_rank_batch(markov_data):
    from moemix.errors import MoemixError

    with pytest.raises(MoemixError, match="micro_batch_size 5 does not divide the per-rank batch 16"):
        train(demo_pretrain_model(), cfg(steps=1, micro_batch_size=5), markov_data, MIX)


def _kill_after_checkpoint(
    procs: list[subprocess.Popen], ckpt: Path, step: int, timeout: float = 240
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = latest_checkpoint(ckpt) if (ckpt / "latest").exists() else None
        if path is not None and read_trainer_state(path)["step"] >= step:
            break
        if any(p.poll() is not None for p in procs):
            raise AssertionError(
                "the run ended before it could be killed: " + procs[0].communicate()[0].decode()[-2000:]
            )
        time.sleep(0.2)
    else:
        raise AssertionError("no checkpoint in time")
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_killed_run_resumes_on_another_world_size(markov_tokens, single, tmp_path, first, then):
    """kill -9 mid-way, resume with another number of ranks (the checkpoint reshards): same final loss."""
    ckpt = tmp_path / "ckpt"
    # log_every=1 and 20 steps are slow enough on one thread for the kill to land mid-run
    s = spec(markov_tokens, cfg(checkpoint_every=5), checkpoint_dir=str(ckpt))
    _kill_after_checkpoint(launch(tmp_path, s, first, "killed"), ckpt, step=10)
    resumed = run_job(tmp_path, s, then, "resumed")[0]
    assert resumed["resumed_from"] >= 10
    assert resumed["resumed_from"] < 20, "the kill came after the run had finished"
    assert rel_diff(resumed["losses"][-1:], single["losses"][-1:]) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "world,parallel",
    [(2, {"ep": 2}), (4, {"ep": 2})],
    ids=["ep2", "fsdp4xep2"],
)
def test_expert_parallel_matches_one_process(markov_tokens, single, tmp_path, world, parallel):
    """Experts split over ep ranks, tokens moved by all-to-all: the one-process run. With 4 ranks the
    dense weights are FSDP-sharded 4 ways and each expert slice lives on 2 ranks (ep_dp 2), whose
    gradients are summed by hand: a missing or doubled reduction changes the losses."""
    ranks = run_job(tmp_path, spec(markov_tokens, cfg(), parallel=parallel), world, f"ep{world}")
    assert all(r["losses"] == ranks[0]["losses"] for r in ranks)
    assert rel_diff(ranks[0]["losses"], single["losses"]) <= 1e-4
    for k, v in single["state"].items():  # gathered from the ep slices and FSDP shards
        assert ranks[0]["state"][k] == pytest.approx(v, rel=1e-3, abs=1e-3), k
    # each ep rank holds half the experts (and a 1/world share of the dense weights)
    assert ranks[0]["expert_bytes"] * 2 == single["expert_bytes"]


@pytest.mark.slow
def test_expert_parallel_run_resumes_on_one_process(markov_tokens, single, tmp_path):
    """A checkpoint written with experts split over 2 ranks loads into one process (global shapes)."""
    ckpt = tmp_path / "ckpt"
    s = spec(markov_tokens, cfg(checkpoint_every=5), checkpoint_dir=str(ckpt), parallel={"ep": 2})
    _kill_after_checkpoint(launch(tmp_path, s, 2, "killed"), ckpt, step=10)
    resumed = run_job(tmp_path, {**s, "parallel": {}}, 1, "resumed")[0]
    assert 10 <= resumed["resumed_from"] < 20
    assert rel_diff(resumed["losses"][-1:], single["losses"][-1:]) <= 1e-4
