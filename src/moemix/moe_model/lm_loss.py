"""The LM head and its cross-entropy in one pass over row chunks, never holding the [N, V] logits.

``F.cross_entropy(lm_head(h))`` materialises the logits, keeps them and their fp32 log-probabilities
for the backward, and then allocates two more [N, V] tensors for their gradients. For a small model
with a large vocabulary that is most of the activation memory, and on CPU most of the step's time:
the demo proxy (d_model 64, vocab 2048, 2048 tokens per step) spent 44% of a step in the head and
its loss, streaming 16 MB tensors through memory five times. Here each chunk of rows gets its logits,
log-sum-exp and loss, and then at once its gradient (softmax minus one-hot, scaled by the mean's
1/N), which goes straight into the input's and the weight's gradients. The backward only multiplies
those by the incoming scalar. Liger-Kernel's fused linear cross-entropy works the same way.

The gradients are computed in the forward even when no backward follows; under ``no_grad`` (evaluation)
only the loss is computed, chunk by chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
# Elements of one chunk's fp32 logits. On CPU 2**20 (4 MB) keeps a chunk's logits near the cache: in a
# sweep over the demo proxy's head + loss forward+backward, 512 rows took 53 ms against 54-62 ms at
# 128-2048 rows and 77-93 ms unfused (one thread, AVX2). On CUDA larger chunks only cost memory, and
# fewer launches win.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}


def chunk_rows(vocab_size: int, device_type: str) -> int:
    """Rows of the logits one chunk computes on ``device_type``."""
    return max(1, CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS["cuda"]) // vocab_size)


def _compute_dtype(h: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype the unfused ``lm_head`` would have used: autocast's, else the inputs' own."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, compute_dtype, rows):  # type: ignore[override]
        n = h.shape[0]
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1)
        scale = valid.to(torch.float32) / n_valid  # d(mean loss)/d(row loss); 0 on ignored rows
        picked_idx = targets.clamp(min=0)[:, None]
        w = weight.to(compute_dtype)
        w_t = w.t()
        grad_h = torch.empty(n, h.shape[1], dtype=compute_dtype, device=h.device)
        # the weight's gradient transposed, [d, V]: hc^T @ dlogits writes it row-major, the fast layout
        grad_w_t = torch.zeros(weight.shape[1], weight.shape[0], dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            hc = h[r0:r1].to(compute_dtype)
            logits = torch.mm(hc, w_t).float()
            picked = logits.gather(1, picked_idx[r0:r1]).squeeze(1)
            peak = logits.amax(1)
            probs = logits.sub_(peak[:, None]).exp_()  # in place: one [rows, V] buffer per chunk
            sum_exp = probs.sum(1)
            total += ((peak + sum_exp.log() - picked) * valid[r0:r1]).sum()
            s = scale[r0:r1]
            probs.mul_((s / sum_exp)[:, None])  # softmax x row scale ...
            probs.scatter_add_(1, picked_idx[r0:r1], -s[:, None])  # ... minus the scaled one-hot
            grad_logits = probs.to(compute_dtype)
            torch.mm(grad_logits, w, out=grad_h[r0:r1])
            grad_w_t += torch.mm(hc.t(), grad_logits)
            del logits, probs, grad_logits  # before the next chunk's logits exist, not after
        ctx.save_for_backward(grad_h, grad_w_t)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        grad_h, grad_w_t = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        grad_h = (grad_h * grad_loss).to(h_dtype) if ctx.needs_input_grad[0] else None
        grad_w = (grad_w_t.t() * grad_loss).to(w_dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None


def _loss_only(h: Tensor, weight: Tensor, targets: Tensor, compute_dtype: torch.dtype, rows: int) -> Tensor:
    valid = targets != IGNORE_INDEX
    picked_idx = targets.clamp(min=0)[:, None]
    w_t = weight.to(compute_dtype).t()
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for r0 in range(0, h.shape[0], rows):
        r1 = min(r0 + rows, h.shape[0])
        logits = torch.mm(h[r0:r1].to(compute_dtype), w_t).float()
        nats = torch.logsumexp(logits, 1) - logits.gather(1, picked_idx[r0:r1]).squeeze(1)
        total += (nats * valid[r0:r1]).sum()
        del logits
    return total / valid.sum().clamp(min=1)


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, rows: int | None = None) -> Tensor:
    """Mean next-token cross-entropy of ``h @ weight.T`` against ``targets`` (``-100`` ignored), in fp32.

    h [..., d]; weight [V, d] (an ``nn.Linear``'s, no bias); targets [...]. Equals
    ``F.cross_entropy((h @ weight.T).float(), targets, ignore_index=-100)`` to float rounding, with the
    matmuls in autocast's dtype when autocast is on, but holds only ``rows`` x V logits at a time."""
    h2 = h.reshape(-1, h.shape[-1])
    t = targets.reshape(-1)
    if t.shape[0] != h2.shape[0]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match the hidden states {tuple(h.shape)}")
    rows = rows or chunk_rows(weight.shape[0], h.device.type)
    dtype = _compute_dtype(h, weight)
    with torch.autocast(h.device.type, enabled=False):  # dtypes are chosen explicitly above
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(h2, weight, t, dtype, rows)
        return _loss_only(h2, weight, t, dtype, rows)
