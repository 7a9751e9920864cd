"""The memory planner against what PyTorch measures on CPU.

Activations: one forward/backward of the demo preset's pretrain model (d_model 96, 3 layers, 8 experts
top-2), measured twice - the distinct storages autograd saves (``saved_tensors_hooks``; the fused loss
keeps no logits) against ``saved_activations``, and the peak of activation and
temporary memory over forward + backward (PyTorch's MemTracker, with the gradients allocated beforehand
so they are not part of the peak) against ``activations`` - without checkpointing and under
``apply_activation_checkpointing``. Parameters, gradients and optimizer state: the bytes a real
``train`` run reports, in one process and on two gloo ranks.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from moemix.errors import MoemixError
from moemix.moe_model import MoETransformer
from moemix.pipeline.config import load_config
from moemix.training.config import TrainConfig
from moemix.training.loop import train
from moemix.training.memory_plan import TRAIN_PARTS, MemoryPlan, check_fits, fit_problem, plan_memory
from moemix.training.parallel import ParallelConfig, apply_activation_checkpointing

MIX = {"d0": 0.4, "d1": 0.3, "d2": 0.2, "d3": 0.1}
BATCH, SEQ = 4, 128
TOL = 0.10  # the estimate is within 1% on this model; 10% leaves room for other torch versions


def demo_model(**kw):
    return dataclasses.replace(load_config().pretrain.model, **{"vocab_size": 64, **kw})


def plan_for(model_cfg, checkpointing="none", precision="fp32", world=1, **train_kw) -> MemoryPlan:
    train_cfg = TrainConfig(batch_size=BATCH, seq_len=SEQ, precision=precision, **train_kw)
    return plan_memory(
        model_cfg, train_cfg, ParallelConfig(activation_checkpointing=checkpointing), world, False
    )


def measure(model_cfg, checkpointing: str, precision: str) -> tuple[int, int]:
    """(bytes saved for backward at the end of the forward, peak activation + temporary bytes)."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    torch.manual_seed(0)
    model = MoETransformer(model_cfg)
    apply_activation_checkpointing(model, checkpointing)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # as from a step's second micro-batch on: not part of the peak
    x = torch.randint(0, model_cfg.vocab_size, (BATCH, SEQ))
    y = torch.randint(0, model_cfg.vocab_size, (BATCH, SEQ))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own and storage.nbytes():
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        out = model(x, targets=y)
    out.loss.backward()
    del out

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        with autocast:
            out = model(x, targets=y)
        out.loss.backward()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return sum(saved.values()), peak[_MemRefType.ACT] + peak[_MemRefType.TEMP]


CASES = [
    ("none", "fp32", {}),
    ("none", "bf16", {}),
    ("full", "fp32", {}),
    ("selective", "bf16", {}),
    # grouped-query attention, a shared expert, a dense first layer, sigmoid router without z-loss
    (
        "none",
        "fp32",
        {
            "n_kv_heads": 2,
            "n_shared_experts": 1,
            "n_dense_layers": 1,
            "router_score": "sigmoid",
            "z_loss_coef": 0.0,
        },
    ),
    ("full", "bf16", {"vocab_size": 4096}),  # the fused loss's chunks of logits dominate
]


@pytest.fixture(scope="module")
def measured() -> dict[int, tuple[int, int]]:
    return {i: measure(demo_model(**kw), ckpt, prec) for i, (ckpt, prec, kw) in enumerate(CASES)}


@pytest.mark.parametrize(
    "case", range(len(CASES)), ids=[f"{c}-{p}-{'+'.join(kw) or 'demo'}" for c, p, kw in CASES]
)
def test_activations_match_what_autograd_saves_and_the_measured_peak(measured, case):
    ckpt, prec, kw = CASES[case]
    plan = plan_for(demo_model(**kw), ckpt, prec)
    saved, peak = measured[case]
    assert plan.saved_activations == pytest.approx(saved, rel=TOL), (plan.saved_activations, saved)
    # the shared expert's backward scratch is taken whole, though it runs after the routed experts'
    assert plan.activations == pytest.approx(peak, rel=0.15 if "n_shared_experts" in kw else TOL), (
        plan.activations,
        peak,
    )


def test_checkpointing_saves_what_the_plan_says(measured):
    """Full checkpointing keeps block inputs only, and a block's set comes back for its backward: the
    saving the plan predicts is the one measured (here 13x less saved, half the peak)."""
    (none_saved, none_peak), (full_saved, full_peak) = measured[0], measured[2]
    none_plan, full_plan = plan_for(demo_model(), "none"), plan_for(demo_model(), "full")
    assert full_plan.saved_activations / none_plan.saved_activations == pytest.approx(
        full_saved / none_saved, rel=TOL
    )
    assert full_plan.activations / none_plan.activations == pytest.approx(full_peak / none_peak, rel=TOL)
    assert full_peak < 0.6 * none_peak


def _grad_bytes(model: torch.nn.Module) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


def test_param_grad_optimizer_bytes_are_what_a_run_holds(markov_data):
    model_cfg = demo_model(vocab_size=65)
    train_cfg = TrainConfig(steps=1, batch_size=BATCH, seq_len=32, measure_mfu=False, num_threads=1)
    res = train(model_cfg, train_cfg, markov_data, MIX)
    plan = plan_memory(model_cfg, train_cfg, ParallelConfig(), 1, False)
    assert plan.n_params == MoETransformer(model_cfg).num_params() == res.params_total
    assert plan.params == res.local_param_bytes
    assert plan.optimizer == res.local_optimizer_bytes
    x = torch.randint(0, 64, (2, 32))
    res.model(x, targets=x).loss.backward()
    assert plan.grads == _grad_bytes(res.model)
    assert plan.buffers == sum(b.numel() * b.element_size() for b in res.model.buffers())


@pytest.mark.slow
@pytest.mark.parametrize("ep", [1, 2])
def test_dp_shard_two_halves_params_and_optimizer(markov_tokens, tmp_path, ep):
    """Two gloo ranks under FSDP2 (and with the experts split over them, ep 2): each rank's bytes are the
    plan's (the larger rank: vocab 65 rows split 33 + 32), and together the two hold what one process
    does."""
    from test_distributed import run_job  # tests/training is on sys.path (rootdir-relative import)

    model_cfg = demo_model(vocab_size=65)
    train_cfg = TrainConfig(steps=1, batch_size=BATCH, seq_len=32, measure_mfu=False, num_threads=1)
    spec = {
        "tokens": str(markov_tokens),
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(train_cfg),
        "mixture": MIX,
        "parallel": {"ep": ep},
    }
    ranks = run_job(tmp_path, spec, 2, "plan")
    one = plan_memory(model_cfg, train_cfg, ParallelConfig(ep=ep), 1, False)
    two = plan_memory(model_cfg, train_cfg, ParallelConfig(ep=ep), 2, False)
    assert two.mesh == (1, 2) and two.ep == ep
    assert two.params == max(r["param_bytes"] for r in ranks)
    assert two.optimizer == max(r["optimizer_bytes"] for r in ranks)
    assert sum(r["param_bytes"] for r in ranks) == one.params
    assert two.grads == two.params  # one micro-batch: fp32 gradients reduce-scattered to shards
    # halved, up to FSDP2's padding of each dim 0 to a multiple of the shard count (the 65-row embedding)
    assert two.params == (one.params + 4 * model_cfg.d_model) / 2


def test_sharded_gradient_accumulation_holds_unsharded_grads():
    """With gradient sync off for all but the last micro-batch, FSDP2 accumulates the unsharded fp32
    gradient of every parameter (``FSDPParamGroup.post_backward``): a per-device cost, not a sharded one."""
    model_cfg = demo_model()
    whole = plan_for(model_cfg, world=2)
    micro = plan_for(model_cfg, world=2, micro_batch_size=1)
    assert (whole.micro_batches, micro.micro_batches) == (1, 2)
    assert micro.grads == 4 * micro.n_params > 1.9 * whole.grads
    assert micro.activations < whole.activations


def test_gpu_plan_uses_bf16_fsdp_and_the_kernel_auto_picks():
    from moemix.kernels.api import auto_gpu_impl

    model_cfg = demo_model(n_kv_heads=2)
    bf16 = TrainConfig(batch_size=BATCH, seq_len=SEQ, precision="bf16")
    gpu = plan_memory(model_cfg, bf16, ParallelConfig(), 2, True)
    cpu = plan_memory(model_cfg, bf16, ParallelConfig(), 2, False)
    auto = auto_gpu_impl()
    assert (gpu.compute_dtype, gpu.gathered_dtype, gpu.experts_kernel, gpu.attention) == (
        "bf16",
        "bf16",
        auto,
        "flash",
    )
    assert (cpu.gathered_dtype, cpu.experts_kernel) == ("fp32", "grouped")
    assert gpu.gathered < cpu.gathered and gpu.activations < cpu.activations
    # the Triton kernel gathers its rows in the GEMM and keeps no silu(gate): less saved than grouped
    triton = plan_memory(
        dataclasses.replace(model_cfg, kernel_impl="triton"), bf16, ParallelConfig(), 2, True
    )
    grouped = plan_memory(
        dataclasses.replace(model_cfg, kernel_impl="grouped"), bf16, ParallelConfig(), 2, True
    )
    assert triton.experts_kernel == "triton" and triton.saved_activations < grouped.saved_activations
    # fp32 on a GPU has no grouped-query attention kernel: the math path keeps T x T probabilities
    fp32 = plan_memory(model_cfg, TrainConfig(batch_size=BATCH, seq_len=SEQ), ParallelConfig(), 1, True)
    assert fp32.attention == "math"
    mha = plan_memory(demo_model(), TrainConfig(batch_size=BATCH, seq_len=SEQ), ParallelConfig(), 1, True)
    assert mha.attention == "efficient"


def test_refusal_is_one_line_naming_the_parts_and_the_keys():
    plan = plan_for(demo_model(), world=2, eval_batch_size=2)
    assert fit_problem(plan, None, "pretrain") is None
    assert fit_problem(plan, 1.0, "pretrain") is None
    line = fit_problem(plan, 0.01, "pretrain")
    assert "\n" not in line
    # small amounts in MiB; the parts add up to the total
    parts = {name: round(getattr(plan, name) / 2**20, 1) for name in TRAIN_PARTS}
    listed = ", ".join(f"{k} {v}" for k, v in parts.items())
    assert line.startswith(f"pretrain: needs {plan.train_total / 2**20:.1f} MiB per device ({listed}), "), (
        line
    )
    big = plan_for(demo_model(d_model=1024, n_heads=8, d_expert=2048), world=2, eval_batch_size=2)
    assert fit_problem(big, 0.01, "pretrain").startswith(
        f"pretrain: needs {big.train_total / 2**30:.1f} GiB "
    )
    assert line.endswith(
        "more than pretrain.device_memory_gb 0.01; split the experts with pretrain.parallel.ep, set "
        "pretrain.train.micro_batch_size, or turn on pretrain.parallel.activation_checkpointing"
    )  # dp_shard is the world already
    with pytest.raises(MoemixError, match="pretrain: needs"):
        check_fits(plan, 0.01, "pretrain")
    # an evaluation batch larger than the training micro-batch: the evaluation is what does not fit
    big_eval = plan_for(demo_model(vocab_size=4096), world=2, eval_batch_size=64)
    assert big_eval.eval_peak > big_eval.train_total
    assert "lower pretrain.train.eval_batch_size" in fit_problem(
        big_eval, big_eval.train_total / 2**30, "pretrain"
    )


def test_batch_that_does_not_split_is_one_line():
    with pytest.raises(MoemixError, match="micro_batch_size 3 does not divide the per-rank batch 4"):
        plan_for(demo_model(), micro_batch_size=3)
    with pytest.raises(MoemixError, match="not divisible by world_size 3"):
        plan_memory(demo_model(), TrainConfig(batch_size=4), ParallelConfig(), 3, False)
