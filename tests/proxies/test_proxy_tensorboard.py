"""Every proxy writes TensorBoard event files next to its result.json."""

from __future__ import annotations

import json

import pytest

from moemix.moe_model import MoEConfig
from moemix.proxies.run import run_proxy, specs_for_mixtures
from moemix.training.config import TrainConfig
from moemix.training.evaluate import TargetConfig

TINY = MoEConfig(
    vocab_size=64, max_seq_len=32, d_model=32, n_layers=1, n_heads=2, n_experts=4, top_k=2, d_expert=32
)


def test_a_proxy_logs_training_and_its_curve_once_per_attempt(markov_data, markov_tokens, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train_cfg = TrainConfig(
        steps=12, batch_size=4, seq_len=32, eval_tokens=256, log_every=4, measure_mfu=False
    )
    (spec,) = specs_for_mixtures(
        [{"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}],
        model=TINY,
        train_cfg=train_cfg,
        target=TargetConfig(),
        tokens_dir=markov_tokens,
        out_dir=tmp_path,
        data=markov_data,
        curve_points=3,
    )
    # a killed earlier attempt left its event file: the new attempt trains from scratch and replaces it
    spec.run_dir.mkdir(parents=True)
    stale = spec.run_dir / "events.out.tfevents.1.host.1"
    stale.write_bytes(b"partial")
    res = run_proxy(spec)
    assert res.status == "ok", res.error
    files = list(spec.run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0] != stale

    acc = event_accumulator.EventAccumulator(str(spec.run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/target"} | {f"eval/loss/{d}" for d in markov_data.domains} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12]
    # the loss curve the fit extrapolates, and the final evaluation, as recorded in result.json
    curve = json.loads(spec.result_path.read_text())["curve"]
    target = acc.Scalars("eval/target")
    assert [e.step for e in target] == [p["step"] for p in curve] == [4, 8, 12]
    assert [e.value for e in target] == pytest.approx([p["target"] for p in curve], rel=1e-6)
    assert target[-1].value == pytest.approx(res.target, rel=1e-6)

    # a finished proxy is not trained again, and its log is left as it is
    stamp = files[0].stat().st_mtime_ns
    assert run_proxy(spec).status == "ok"
    assert [f.stat().st_mtime_ns for f in spec.run_dir.glob("events.out.tfevents.*")] == [stamp]
