"""Validation loss and bits-per-byte on every domain and on the configured target.

Bits per byte: ``bpb = total nats / ln 2 / total UTF-8 bytes`` of the evaluated text. Shards do
not record bytes per sequence, so the evaluated bytes are estimated as ``evaluated tokens ×
(bytes / tokens)`` of that domain's valid split from ``meta.json`` (EOS tokens are counted on both
sides of the ratio, so the estimate is exact when the whole split is evaluated and unbiased for
the fixed prefix otherwise). bpb is what makes losses comparable across tokenizers; nats/token is
what the swarm regresses on.

Target: ``TargetConfig.external`` (a tokens dir in the shard format, every domain of its valid
split pooled) if set, else the weighted average of per-domain valid losses under
``TargetConfig.domains`` (None = uniform over all domains).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moemix.errors import MoemixError
from moemix.token_shards import DomainTokens
from moemix.training.config import TargetConfig
from moemix.training.stream import eval_batches

LN2 = math.log(2.0)


@dataclass
class EvalResult:
    loss: dict[str, float] = field(default_factory=dict)  # nats/token per domain
    bpb: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # evaluated (predicted) tokens per domain
    target: float = float("nan")
    target_bpb: float = float("nan")


@torch.no_grad()
def sequence_nats(
    model: torch.nn.Module,
    data: DomainTokens,
    domain: str,
    *,
    seq_len: int,
    max_tokens: int,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    split: str = "valid",
) -> tuple[float, int]:
    """(sum of next-token nats, number of predicted tokens) on the fixed eval sequences of a domain."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    total = 0.0
    n = 0
    for x, y in eval_batches(
        data, domain, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size, split=split
    ):
        # with targets the model computes its loss in row chunks, never the whole batch's logits
        mean_nats = model(x.to(device), targets=y.to(device)).lm_loss
        total += float(mean_nats) * y.numel()  # eval targets are all real tokens: no ignore_index
        n += y.numel()
    return total, n


def _bytes_per_token(data: DomainTokens, split: str, domain: str) -> float:
    tokens = data.meta.tokens.get(split, {}).get(domain, 0)
    n_bytes = data.meta.bytes.get(split, {}).get(domain, 0)
    return n_bytes / tokens if tokens and n_bytes else float("nan")


def target_weights(target: TargetConfig, domains: list[str]) -> dict[str, float]:
    if target.domains is None:
        return {d: 1.0 / len(domains) for d in domains}
    unknown = sorted(set(target.domains) - set(domains))
    if unknown:
        raise MoemixError(f"target.domains names unknown domain {unknown[0]!r}; known: {', '.join(domains)}")
    s = sum(target.domains.values())
    return {d: w / s for d, w in target.domains.items() if w > 0}


def evaluate(
    model: torch.nn.Module,
    data: DomainTokens,
    target: TargetConfig | None = None,
    *,
    seq_len: int,
    eval_tokens: int,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    domains: list[str] | None = None,
) -> EvalResult:
    """Per-domain valid loss/bpb and the target loss/bpb (model is left in train mode)."""
    target = target or TargetConfig()
    was_training = model.training
    model.eval()
    try:
        res = EvalResult()
        for d in domains if domains is not None else data.domains:
            nats, n = sequence_nats(
                model, data, d, seq_len=seq_len, max_tokens=eval_tokens, batch_size=batch_size, device=device
            )
            res.tokens[d] = n
            res.loss[d] = nats / n if n else float("nan")
            res.bpb[d] = nats / LN2 / (n * _bytes_per_token(data, "valid", d)) if n else float("nan")
        if target.external:
            res.target, res.target_bpb = _external_loss(
                model,
                data,
                target.external,
                seq_len=seq_len,
                eval_tokens=eval_tokens,
                batch_size=batch_size,
                device=device,
            )
        else:
            res.target = weighted_target(res.loss, target, data.domains)
            res.target_bpb = weighted_target(res.bpb, target, data.domains, strict=False)
        return res
    finally:
        model.train(was_training)


def load_external(path: str | Path, vocab_size: int) -> DomainTokens:
    ext = DomainTokens(path)
    if ext.vocab_size != vocab_size:
        raise MoemixError(
            f"target.external {path}: vocab_size {ext.vocab_size} does not match the domains' {vocab_size}"
        )
    return ext


def _external_loss(
    model: torch.nn.Module,
    data: DomainTokens,
    path: str,
    *,
    seq_len: int,
    eval_tokens: int,
    batch_size: int,
    device: torch.device | str | None,
) -> tuple[float, float]:
    """Token-pooled loss and bpb over every domain of the external set's valid split.

    The external set is usually one domain; each of its domains is capped at ``eval_tokens``
    times 4, since the target is the quantity the whole search optimises and deserves the
    lowest-variance estimate.
    """
    ext = load_external(path, data.vocab_size)
    nats_total, tok_total, bytes_total = 0.0, 0, 0.0
    for d in ext.domains:
        nats, n = sequence_nats(
            model, ext, d, seq_len=seq_len, max_tokens=4 * eval_tokens, batch_size=batch_size, device=device
        )
        nats_total += nats
        tok_total += n
        bytes_total += n * _bytes_per_token(ext, "valid", d)
    if tok_total == 0:
        raise MoemixError(f"target.external {path}: valid split has no tokens")
    return nats_total / tok_total, nats_total / LN2 / bytes_total


def weighted_target(
    losses: Mapping[str, float], target: TargetConfig, domains: list[str], *, strict: bool = True
) -> float:
    """A weighted-domain target from per-domain losses (or bpb): an evaluation's, or a finished run's
    recorded ones scored under another target. ``strict``: a target domain without a value is an error;
    otherwise it makes the result NaN (bpb, where a domain's byte count is unknown)."""
    w = target_weights(target, domains)
    missing = [d for d in w if d not in losses or math.isnan(losses[d])]
    if missing and strict:
        raise MoemixError(f"target domain {missing[0]!r} has no validation tokens to evaluate")
    return sum(wd * losses.get(d, float("nan")) for d, wd in w.items())
