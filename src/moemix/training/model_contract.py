"""What the training loop needs from a model (``MoETransformer`` and the tests' stand-ins)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class TrainableModel(Protocol):
    """``forward(x, targets)`` returns an object with ``.loss`` (what backward sees: LM loss plus any
    weighted auxiliary terms) and ``.lm_loss`` (what is logged). A ``.blocks`` list of repeated layers,
    when the model has one, is what parallelism and activation checkpointing wrap one by one."""

    def __call__(self, input_ids: Tensor, targets: Tensor | None = None) -> Any: ...

    def begin_global_batch(self, micro_batches: Sequence[Tensor] = ()) -> None:
        """Called once per optimizer step, before its first micro-batch."""

    def update_router_biases(self) -> None:
        """Called after every optimizer step (identically on every rank)."""

    def expert_load_by_domain(self, domain_ids: Tensor, n_domains: int) -> Tensor:
        """[layers, domains, experts] routed counts of the last forward (a zero-width tensor for dense
        models)."""

    def num_params(self, active_only: bool = False) -> int: ...

    def flops_per_token(self, seq_len: int) -> float: ...
