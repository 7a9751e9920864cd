"""Per-device memory of a training run, planned before anything launches (``moemix plan``).

``plan_memory(model_cfg, train_cfg, parallel, world_size, use_gpu)`` counts what one rank holds:

* **params / grads / optimizer** - exact. The model is built on the ``meta`` device and every parameter
  is counted the way FSDP2 stores it: fp32 master weights chunked on dim 0 over ``dp_shard``
  (``ceil(dim0 / dp_shard)`` rows on every rank, FSDP2's padded shard), fp32 gradients the same, and
  AdamW's two fp32 moments plus a 4-byte ``step`` per tensor. One caveat is modelled too: with gradient
  accumulation (``micro_batches > 1``) on a sharded run the loop turns gradient sync off for all but the
  last micro-batch, and FSDP2 then keeps the *unsharded* fp32 gradient of every parameter until the
  last one reduce-scatters - ``grads`` is the whole model's fp32 gradient on every rank. Under expert
  parallelism (``ep`` > 1) the routed experts are not FSDP's: each rank holds ``E / ep`` of every layer's
  experts whole (weights, gradients and moments), replicated over the ``ep_dp`` ranks.
* **gathered** - FSDP2's working set (estimated from its schedule): the root module's parameters (the
  tied embedding and final norm, gathered through the forward and the backward), two blocks' parameters
  at a time (the one computing and the one prefetched) plus one all-gather staging buffer, and in the
  backward the root's and one block's unsharded gradients plus two fp32 reduce-scatter buffers. In bf16
  (``mixed_precision`` on GPU) or fp32 otherwise. A world of one has no gathering, but bf16 autocast over
  fp32 weights keeps bf16 copies of the matmul weights for the backward; those count here.
* **activations** - an analytic estimate of the peak of what one micro-batch's forward/backward holds:
  per block, every tensor autograd saves (norm inputs and their fp32 statistics, the qkv projection,
  the rotated q and k, the attention output and its log-sum-exp - flash/efficient attention keeps O(T)
  per head, the math path the T x T probabilities -, the router's fp32 logits/probabilities and top-k
  indices, the dispatched expert rows of the grouped or Triton kernel (x top_k; the grouped kernel's CPU
  chunking only shrinks its backward scratch, which the plan takes whole), shared and dense
  SwiGLU intermediates); the embedding indices, the final norm, and what the fused LM-head loss
  (``moe_model.lm_loss``) keeps: the gradients of its input and weight, computed in the forward one
  chunk of rows at a time, so only a chunk's logits ever exist. ``activation_checkpointing``
  keeps only each checkpointed block's input, and a checkpointed block's whole set comes back during
  its backward. The peak is the largest of the loss's forward (everything saved plus one chunk's
  logits), the start of the backward (the loss's gradients scaled by the incoming one) and the backward
  of each block (what is still saved below it, its own set, and its backward's scratch: the expert
  kernels' gradient buffers and the block's weight gradients on an unsharded run). Expert parallelism
  adds, per MoE block, the per-slot expert outputs the routing weights multiply (saved) and the
  exchange's send and receive buffers (scratch), with the tokens assumed balanced over the ep ranks.
  ``saved_activations`` is what autograd holds when the forward ends.
  Checked on CPU against what ``saved_tensors_hooks`` and PyTorch's MemTracker measure
  (tests/training/test_memory_plan.py); the bf16/GPU variants follow the same accounting with the
  dtypes and kernels the GPU path uses, unmeasured here.
* **eval** - the final evaluation: after a sharded run rank 0 gathers the whole fp32 model onto its
  device while its shards and optimizer state still exist, then evaluates ``eval_batch_size``
  sequences (fp32, no grad: a block's temporaries or one chunk of the loss's logits, whichever is larger).

Not counted: the CUDA context and NCCL buffers (about 1 GiB), allocator fragmentation, the no-grad
counting pass of ``aux_loss_scope: global``, ``torch.compile`` (it usually saves less), and the CPU
kernel's padded "capacity" layout (up to 1.25x the expert rows, multi-threaded CPU only). Leave
~10% of the device spare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moemix.errors import MoemixError
from moemix.kernels.api import auto_gpu_impl
from moemix.moe_model.config import MoEConfig
from moemix.moe_model.lm_loss import chunk_rows
from moemix.training.config import ParallelConfig, TrainConfig

GIB = 1 << 30

# The MemoryPlan fields that add up to ``train_total``, in the order they are printed
TRAIN_PARTS = ("params", "grads", "optimizer", "buffers", "gathered", "activations")


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds while training (and evaluating) one model; see the module docstring."""

    # ---- inputs
    world_size: int
    mesh: tuple[int, int]  # (dp_replicate, dp_shard)
    ep: int  # ranks splitting each layer's experts (1: no expert parallelism)
    micro_batch: int  # sequences per forward/backward on one rank
    micro_batches: int  # forward/backward passes per optimizer step
    seq_len: int
    checkpointing: str  # none | full | selective
    compute_dtype: str  # dtype the blocks compute in: bf16 | fp32
    gathered_dtype: str  # dtype FSDP2 gathers parameters in ("-" for a world of one)
    attention: str  # flash | efficient | math (the SDPA path the plan assumes)
    experts_kernel: str  # triton | grouped
    n_params: int
    has_experts: bool  # the model has routed experts (expert parallelism applies)
    # ---- per-device bytes
    params: int
    grads: int
    optimizer: int
    buffers: int
    gathered: int
    activations: int  # peak over the forward/backward of one micro-batch
    saved_activations: int  # what autograd holds at the end of the forward (within ``activations``)
    eval_peak: int  # the final evaluation's peak (rank 0 on a sharded run)

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def train_total(self) -> int:
        return sum(getattr(self, name) for name in TRAIN_PARTS)

    @property
    def total(self) -> int:
        """What the device must hold: training or the final evaluation, whichever needs more."""
        return max(self.train_total, self.eval_peak)

    def gib(self, name: str) -> float:
        return getattr(self, name) / GIB


# --------------------------------------------------------------------------------------- params
@dataclass(frozen=True)
class _ParamLayout:
    shapes: list[tuple[int, ...]]  # every distinct parameter (tied ones once) but the routed experts
    expert_shapes: list[tuple[int, ...]]  # the routed experts' stacked weights ([E, ...] each)
    root_numel: int  # parameters outside the blocks (embedding/LM head, final norm)
    block_numel: list[int]
    block_expert_numel: list[int]  # the routed experts' share of block_numel
    block_matmul_numel: list[int]  # the block's >= 2-d weights (what autocast copies to bf16)
    root_matmul_numel: int  # the LM head's weight (a bf16 copy under autocast)
    buffer_bytes: int
    n_params: int


def _layout(cfg: MoEConfig) -> _ParamLayout:
    from moemix.moe_model import MoETransformer  # lazy: keeps `import moemix.training` light

    with torch.device("meta"):
        model = MoETransformer(cfg)
    params = list(model.parameters())  # distinct: a tied embedding once
    in_blocks = {id(p) for b in model.blocks for p in b.parameters()}
    experts = {id(p) for n, p in model.named_parameters() if ".experts." in n}
    block_numel = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    block_experts = [sum(p.numel() for p in b.parameters() if id(p) in experts) for b in model.blocks]
    block_matmul = [sum(p.numel() for p in b.parameters() if p.dim() >= 2) for b in model.blocks]
    return _ParamLayout(
        shapes=[tuple(p.shape) for p in params if id(p) not in experts],
        expert_shapes=[tuple(p.shape) for p in params if id(p) in experts],
        root_numel=sum(p.numel() for p in params if id(p) not in in_blocks),
        block_numel=block_numel,
        block_expert_numel=block_experts,
        block_matmul_numel=block_matmul,
        root_matmul_numel=model.lm_head.weight.numel(),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        n_params=sum(p.numel() for p in params),
    )


def _shard_numel(shape: tuple[int, ...], shards: int) -> int:
    """Elements FSDP2 stores per rank for a parameter: dim 0 chunked, padded to the largest chunk."""
    rest = math.prod(shape[1:])
    return -(-shape[0] // shards) * rest if shape else 1


# ----------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class _Dtypes:
    res: int  # residual stream bytes
    comp: int  # matmul input/output bytes
    casts: bool  # autocast over fp32 tensors: the matmul inputs and weights get separate bf16 copies


def _dtypes(train_cfg: TrainConfig, fsdp_bf16: bool) -> _Dtypes:
    if fsdp_bf16:  # FSDP2 gathers bf16 parameters: the embedding and every block compute in bf16
        return _Dtypes(res=2, comp=2, casts=False)
    if train_cfg.precision == "bf16":  # autocast over fp32 weights; the embedding (and residual) stay fp32
        return _Dtypes(res=4, comp=2, casts=True)
    return _Dtypes(res=4, comp=4, casts=False)


def _attention_path(cfg: MoEConfig, comp: int, use_gpu: bool) -> str:
    """The SDPA kernel for causal attention without a mask. CPU: torch's flash kernel (fp32 and bf16, GQA
    included; measured on torch 2.13). CUDA: flash in bf16; fp32 has memory-efficient attention, which
    does not take ``enable_gqa``, so grouped-query attention falls back to the math path."""
    if not use_gpu or comp == 2:
        return "flash"
    return "math" if cfg.kv_heads != cfg.n_heads else "efficient"


def _experts_kernel(cfg: MoEConfig, use_gpu: bool) -> str:
    """What ``moemix.kernels.resolve_impl`` picks on the training device."""
    if cfg.kernel_impl == "auto":
        return auto_gpu_impl() if use_gpu else "grouped"
    # the reference loop saves about what the grouped kernel does (its gathers, gate/up, activation)
    return "triton" if cfg.kernel_impl == "triton" else "grouped"


@dataclass(frozen=True)
class _BlockBytes:
    attn: int  # saved by the attention half (norm, qkv, attention)
    ffn: int  # saved by the feed-forward half (norm, router, experts / SwiGLU)
    ws_attn: int  # scratch of the attention half's backward
    ws_ffn: int  # scratch of the feed-forward half's backward
    input: int  # the block's input (what checkpointing keeps)

    @property
    def full(self) -> int:
        return self.attn + self.ffn


def _norm(d: int, dt: _Dtypes) -> int:
    """RMSNorm: the fp32 input (x itself, or its fp32 copy), the fp32 rsqrt, the normalised x."""
    return 4 * d + 4 + dt.res * d


def _swiglu(hidden: int, c: int) -> int:
    """Fused gate/up output [2h], silu(gate) [h], silu(gate) * up [h] (the down projection's input)."""
    return c * 4 * hidden


def _block_bytes(
    cfg: MoEConfig,
    moe: bool,
    n: int,
    seq_len: int,
    dt: _Dtypes,
    attention: str,
    kernel: str,
    matmul_numel: int,
    ep: int = 1,
) -> _BlockBytes:
    """Bytes one block saves / needs as scratch for ``n`` tokens (``seq_len`` per sequence)."""
    d, h, kv = cfg.d_model, cfg.n_heads, cfg.kv_heads
    hd = d // h
    c, r = dt.comp, dt.res
    # ---- attention half, per token
    attn = _norm(d, dt) + c * d  # + the qkv projection's input (norm output, or its bf16 copy)
    attn += c * (h + 2 * kv) * hd  # qkv output: v is a view of it, so the whole storage stays
    attn += c * (h + kv) * hd  # rotated q and k
    attn += c * h * hd + 4 * h  # attention output (the out projection's input too) and its log-sum-exp
    if attention == "math":  # the T x T probabilities, and k/v repeated to every query head
        attn += c * h * seq_len + (2 * c * h * hd if kv != h else 0)
    ws_attn = 2 * c * (h + 2 * kv) * hd + 3 * r * d  # grads of q/k/v and the qkv output, residual grads
    # ---- feed-forward half, per token
    ffn = _norm(d, dt) + c * d  # + the router's (or SwiGLU's) input
    if moe:
        e, k, f = cfg.n_routed, cfg.k_routed, cfg.d_routed
        ffn += 4 * e  # fp32 probabilities (softmax output) / scores (sigmoid)
        ffn += 4 if cfg.router_score == "sigmoid" else 0  # their row sums
        if cfg.z_loss_coef > 0:
            ffn += 4 * e + 4  # z-loss: the fp32 logits and their log-sum-exp
        ffn += 8 * k  # top-k indices (int64)
        if cfg.router_renorm:
            ffn += 4 * k + 4  # the chosen weights and their sum
        if kernel == "triton":
            # h = x W_gate_up, a = silu(g) * u, y = a W_down per (token, slot) row; fp32 gate weights and
            # int32 token/order per row; x itself (a bf16 copy when autocast casts it)
            ffn += k * (c * (3 * f + d) + 12) + (c * d if dt.casts else 0)
            ws_ffn = k * (c * (2 * f + d) + 4)  # dh, dx rows, d(gate weight)
        else:
            # gathered x, h, silu(g), a, y per row; the routing plan (int64 token/row maps, weights)
            ffn += k * (c * (2 * d + 4 * f) + 16 + c) + 8 * k
            ws_ffn = k * c * (2 * d + 3 * f + 1)  # upstream rows, da, dh, dx rows, row dots
        if ep > 1:  # the per-slot outputs the weights multiply; the exchange's send/receive buffers
            ffn += k * c * d
            ws_ffn += 2 * k * c * d
        if cfg.n_shared_experts:
            fs = cfg.n_shared_experts * f
            ffn += _swiglu(fs, c) + (c * d if dt.casts else 0)
            ws_ffn = max(ws_ffn, c * 4 * fs)
    else:
        ffn += _swiglu(cfg.d_dense_hidden, c)
        ws_ffn = c * 4 * cfg.d_dense_hidden
    ws_ffn += 3 * r * d
    const = 2 * matmul_numel if dt.casts else 0  # bf16 copies of the block's weights, saved for backward
    return _BlockBytes(
        attn=n * attn + const, ffn=n * ffn, ws_attn=n * ws_attn, ws_ffn=n * ws_ffn, input=n * r * d
    )


def _checkpointed(mode: str, i: int) -> bool:
    """Mirrors ``moemix.training.parallel.apply_activation_checkpointing``."""
    return mode == "full" or (mode == "selective" and i % 2 == 0)


@dataclass(frozen=True)
class _Activations:
    saved: int  # at the end of the forward
    peak: int


def _activations(
    cfg: MoEConfig,
    layout: _ParamLayout,
    n: int,
    seq_len: int,
    dt: _Dtypes,
    attention: str,
    kernel: str,
    checkpointing: str,
    sharded: bool,
    ep: int,
    loss_rows: int,
) -> _Activations:
    d, v = cfg.d_model, cfg.vocab_size
    blocks = [
        _block_bytes(
            cfg,
            i >= cfg.n_dense_layers,
            n,
            seq_len,
            dt,
            attention,
            kernel,
            layout.block_matmul_numel[i],
            ep,
        )
        for i in range(cfg.n_layers)
    ]
    kept = [b.input if _checkpointed(checkpointing, i) else b.full for i, b in enumerate(blocks)]
    # embedding indices and the final norm; the fused LM-head loss saves only the gradients it already
    # computed: the hidden states' (compute dtype) and the weight's (fp32, transposed)
    head = n * (8 + _norm(d, dt) + dt.comp * d) + 4 * d * v
    saved = sum(kept) + head
    # the loss's forward: one chunk's fp32 logits (bf16: with its matmul output, later its gradient's copy)
    # and the weight-gradient product; under autocast the weight's bf16 copy
    chunk = loss_rows * v * (4 + (dt.comp if dt.comp != 4 else 0)) + dt.comp * d * v
    chunk += dt.comp * layout.root_matmul_numel if dt.casts else 0
    # start of the backward: the two gradients scaled by the incoming one, in the inputs' dtypes
    start = n * d * (dt.comp + (dt.res if dt.res != dt.comp else 0)) + 4 * d * v
    peak = saved + max(chunk, start)
    below = 0  # what blocks 0..i-1 still hold while block i runs its backward
    for i, b in enumerate(blocks):
        # an unsharded run's weight gradients, in the compute dtype while the kernels' saved tensors still
        # exist (cast to fp32 and accumulated after those are freed); FSDP2's are under "gathered"
        wgrad = 0 if sharded else dt.comp * layout.block_numel[i]
        extra = b.input if _checkpointed(checkpointing, i) and dt.res != 4 else 0  # kept input + recompute
        ffn_phase = below + extra + b.full + b.ws_ffn + wgrad
        attn_phase = below + extra + b.attn + b.ws_attn + wgrad
        peak = max(peak, ffn_phase, attn_phase)
        below += kept[i]
    return _Activations(saved=saved, peak=peak)


def _eval_activations(cfg: MoEConfig, n: int, seq_len: int, use_gpu: bool) -> int:
    """No-grad fp32 forward of ``n`` tokens: the larger of one block's temporaries and the loss."""
    d, v, h = cfg.d_model, cfg.vocab_size, cfg.n_heads
    fp32 = _Dtypes(res=4, comp=4, casts=False)
    attention = _attention_path(cfg, 4, use_gpu)
    kernel = _experts_kernel(cfg, use_gpu)
    scores = 2 * 4 * h * seq_len if attention == "math" else 0  # scores and probabilities of one layer
    block = max(
        _block_bytes(cfg, moe, n, seq_len, fp32, attention, kernel, 0).ffn + scores * n
        for moe in {i >= cfg.n_dense_layers for i in range(cfg.n_layers)}
    )
    # the final norm's output, and one chunk's fp32 logits and log-sum-exp temporary
    rows = min(n, chunk_rows(v, "cuda" if use_gpu else "cpu"))
    loss = rows * (4 * v + 4 * v) + n * 4 * d
    return max(block, loss) + 2 * n * 4 * d  # the residual stream in and out


# ------------------------------------------------------------------------------------------ plan
def plan_memory(
    model_cfg: MoEConfig, train_cfg: TrainConfig, parallel: ParallelConfig, world_size: int, use_gpu: bool
) -> MemoryPlan:
    """Per-device bytes of training ``model_cfg`` with ``train_cfg`` on ``world_size`` ranks laid out by
    ``parallel`` (GPU ranks when ``use_gpu``); a one-line MoemixError when the batch does not split."""
    if world_size < 1:
        raise MoemixError(f"world size must be >= 1, got {world_size}")
    try:
        mesh = parallel.mesh_shape(world_size) if world_size > 1 else (1, 1)
    except ValueError as e:
        raise MoemixError(str(e)) from None
    if train_cfg.batch_size % world_size:
        raise MoemixError(
            f"global batch_size {train_cfg.batch_size} is not divisible by world_size {world_size}"
        )
    local = train_cfg.batch_size // world_size
    try:
        n_micro = train_cfg.micro_batches(local)
    except ValueError as e:
        raise MoemixError(str(e)) from None
    micro = local // n_micro
    layout = _layout(model_cfg)
    sharded = world_size > 1
    shards = mesh[1]
    fsdp_bf16 = sharded and use_gpu and parallel.mixed_precision
    dt = _dtypes(train_cfg, fsdp_bf16)

    ep = parallel.ep if sharded else 1
    # exact: what FSDP2 (or the plain module) stores on the most loaded rank; ep slices are whole
    expert_local = sum(math.prod(s) // ep for s in layout.expert_shapes)
    dense_total = layout.n_params - sum(math.prod(s) for s in layout.expert_shapes)
    if sharded and ep > 1:
        local_numel = sum(_shard_numel(s, shards) for s in layout.shapes) + expert_local
    elif sharded:
        local_numel = sum(_shard_numel(s, shards) for s in layout.shapes + layout.expert_shapes)
    else:
        local_numel = layout.n_params
    params = 4 * local_numel
    n_tensors = len(layout.shapes) + len(layout.expert_shapes)
    optimizer = 2 * params + 4 * n_tensors  # exp_avg, exp_avg_sq (fp32) and a step per tensor
    grads = 4 * (dense_total + expert_local) if (not sharded or n_micro > 1) else params

    if sharded:
        p = 2 if fsdp_bf16 else 4
        # FSDP gathers a block's dense weights (and, without ep, its experts)
        block = max(
            n - (e if ep > 1 else 0)
            for n, e in zip(layout.block_numel, layout.block_expert_numel, strict=True)
        )
        everything = dense_total if ep > 1 else layout.n_params
        held = everything if not parallel.reshard_after_forward else layout.root_numel + 2 * block
        gathered = p * (held + block) + p * (layout.root_numel + block) + 2 * 4 * block
    else:
        gathered = 0  # autocast's bf16 weight copies are saved tensors: counted with the activations

    attention = _attention_path(model_cfg, dt.comp, use_gpu)
    kernel = _experts_kernel(model_cfg, use_gpu)
    acts = _activations(
        model_cfg,
        layout,
        micro * train_cfg.seq_len,
        train_cfg.seq_len,
        dt,
        attention,
        kernel,
        parallel.activation_checkpointing,
        sharded,
        ep,
        min(micro * train_cfg.seq_len, chunk_rows(model_cfg.vocab_size, "cuda" if use_gpu else "cpu")),
    )

    full_model = 4 * layout.n_params + layout.buffer_bytes
    eval_acts = _eval_activations(
        model_cfg, train_cfg.eval_batch_size * train_cfg.seq_len, train_cfg.seq_len, use_gpu
    )
    if sharded:  # rank 0 gathers the whole model while its shards and optimizer state still exist
        eval_peak = max(params + optimizer + full_model, full_model + eval_acts)
    else:  # a proxy may evaluate during training (curve points): the optimizer state is there too
        eval_peak = full_model + optimizer + eval_acts

    return MemoryPlan(
        world_size=world_size,
        mesh=mesh,
        ep=ep,
        micro_batch=micro,
        micro_batches=n_micro,
        seq_len=train_cfg.seq_len,
        checkpointing=parallel.activation_checkpointing,
        compute_dtype="bf16" if dt.comp == 2 else "fp32",
        gathered_dtype=("bf16" if fsdp_bf16 else "fp32") if sharded else "-",
        attention=attention,
        experts_kernel=kernel,
        n_params=layout.n_params,
        has_experts=bool(layout.expert_shapes),
        params=params,
        grads=grads,
        optimizer=optimizer,
        buffers=layout.buffer_bytes,
        gathered=gathered,
        activations=acts.peak,
        saved_activations=acts.saved,
        eval_peak=eval_peak,
    )


# ----------------------------------------------------------------------------------------- check
def _unit(n: int) -> tuple[int, str]:
    return (GIB, "GiB") if n >= GIB // 10 else (1 << 20, "MiB")


def fit_problem(plan: MemoryPlan, limit_gib: float | None, what: str) -> str | None:
    """The one line saying why ``plan`` does not fit ``limit_gib`` (None when it fits or is unchecked).

    ``what`` names the config section (``pretrain``): the line points at its keys."""
    if limit_gib is None or plan.total <= limit_gib * GIB:
        return None
    limit = f"{what}.device_memory_gb {limit_gib:g}"
    if plan.eval_peak > plan.train_total:
        div, unit = _unit(plan.eval_peak)
        return (
            f"{what}: the final evaluation needs {plan.eval_peak / div:.1f} {unit} on one device (the whole "
            f"fp32 model {4 * plan.n_params / div:.1f} and {what}.train.eval_batch_size sequences), more "
            f"than {limit}; "
            f"lower {what}.train.eval_batch_size"
        )
    div, unit = _unit(plan.train_total)
    parts = ", ".join(
        f"{name} {getattr(plan, name) / div:.1f}" for name in TRAIN_PARTS if getattr(plan, name)
    )
    hints = []
    if plan.mesh[1] < plan.world_size:
        hints.append(f"raise {what}.parallel.dp_shard")
    if plan.ep == 1 and plan.world_size > 1 and plan.has_experts:
        hints.append(f"split the experts with {what}.parallel.ep")
    if plan.micro_batch > 1:
        hints.append(f"{'set' if plan.micro_batches == 1 else 'lower'} {what}.train.micro_batch_size")
    if plan.checkpointing == "none":
        hints.append(f"turn on {what}.parallel.activation_checkpointing")
    elif plan.checkpointing == "selective":
        hints.append(f"set {what}.parallel.activation_checkpointing to full")
    if not hints:
        hints.append(f"use more workers or a smaller {what}.model")
    advice = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + ", or " + hints[-1]
    return (
        f"{what}: needs {plan.train_total / div:.1f} {unit} per device ({parts}), more than {limit}; {advice}"
    )


def check_fits(plan: MemoryPlan, limit_gib: float | None, what: str) -> None:
    """Raise the one-line MoemixError of ``fit_problem`` when ``plan`` does not fit."""
    problem = fit_problem(plan, limit_gib, what)
    if problem is not None:
        raise MoemixError(problem)
