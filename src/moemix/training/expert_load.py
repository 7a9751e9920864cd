"""Per-domain expert load of a trained MoE: where each domain's tokens are routed.

Measured on the same fixed validation sequences ``evaluate`` scores (``eval_batches``), with the model in
eval mode, so the figure is the final model's routing on held-out text of each domain, the same for every
run and rank count. The training loop's ``TrainResult.expert_load_by_domain`` is not used for the report:
it samples one micro-batch of rank 0 on log steps, over a model that is still changing.

Counts, not shares, are recorded (``[moe_layer][expert]`` routed (token, slot) pairs per domain), so a
reader can normalise them either way and check them against the evaluated tokens times top-k.
"""

from __future__ import annotations

from typing import Any

import torch

from moemix.training.stream import eval_batches


@torch.no_grad()
def expert_load_by_domain(
    model: torch.nn.Module,
    data: Any,
    *,
    seq_len: int,
    eval_tokens: int,
    batch_size: int = 32,
    domains: list[str] | None = None,
) -> dict[str, Any] | None:
    """``{"counts": {domain: [[count per expert] per MoE layer]}, "tokens": {domain: n}, "top_k": k,
    "split": "valid"}`` for a model with ``expert_load()`` (``MoETransformer``); None for a model without
    routed experts. ``data``: a ``DomainTokens``; the model is left in the mode it was in."""
    if not callable(getattr(model, "expert_load", None)):
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counts: dict[str, list[list[int]]] = {}
    tokens: dict[str, int] = {}
    try:
        for d in domains if domains is not None else data.domains:
            total: torch.Tensor | None = None
            n = 0
            for x, _ in eval_batches(data, d, seq_len=seq_len, max_tokens=eval_tokens, batch_size=batch_size):
                model(x.to(device))
                load = model.expert_load()  # [n_moe_layers, n_experts] of this forward
                total = load if total is None else total + load
                n += x.numel()
            if total is None or not total.numel():
                continue  # no validation tokens, or no MoE layer
            counts[d], tokens[d] = total.tolist(), n
    finally:
        model.train(was_training)
    if not counts:
        return None
    k = int(getattr(getattr(model, "cfg", None), "k_routed", 0)) or None
    return {"counts": counts, "tokens": tokens, "top_k": k, "split": "valid"}
