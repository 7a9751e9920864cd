"""MoE language-model hyperparameters (defaults: a ~1M-parameter CPU proxy)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from moemix.kernels.impls import Impl


@dataclass
class MoEConfig:
    vocab_size: int = 4096
    max_seq_len: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 0  # 0 = n_heads (plain MHA); fewer = grouped-query attention
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 256  # expert hidden size f (before fine-graining)
    # Fine-grained experts (DeepSeekMoE): each expert is split into `granularity` experts of hidden
    # d_expert // granularity and top_k is scaled by the same factor, so FLOPs/params stay fixed.
    granularity: int = 1
    n_shared_experts: int = 0  # always-on experts, each the size of one (fine-grained) expert
    n_dense_layers: int = 0  # the first n layers use a dense SwiGLU instead of an MoE block
    d_dense: int = 0  # hidden size of those dense layers; 0 = top_k * d_expert (same active FLOPs)
    kernel_impl: Impl = "auto"
    router_score: Literal["softmax", "sigmoid"] = "softmax"
    router_renorm: bool = True  # renormalise the chosen top-k weights to sum to 1
    balance: Literal["aux", "aux_free", "none"] = "aux"  # Switch loss | DeepSeek-V3 bias | none
    aux_loss_coef: float = 0.01
    aux_loss_scope: Literal["micro", "global"] = "micro"  # global: expert frequencies over the global batch
    z_loss_coef: float = 0.001
    bias_update_rate: float = 0.001
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    # None = 0.5 / sqrt(d_model): GPT-2's 0.02 at d_model 768, DeepSeek-V3's 0.006 at 7168. A fixed
    # 0.02 is far too small for narrow models: the d_model-96 demo pretrain model then lost 0.5 nats at
    # 614k tokens and its loss depended on the init seed by 0.13 nats (0.006 at this width's rule);
    # docs/benchmarks/mixture_quality.md
    init_std: float | None = None
    norm_eps: float = 1e-6

    # ---- derived sizes ----
    @property
    def n_routed(self) -> int:
        """Experts per MoE layer after fine-graining."""
        return self.n_experts * self.granularity

    @property
    def k_routed(self) -> int:
        return self.top_k * self.granularity

    @property
    def d_routed(self) -> int:
        return self.d_expert // self.granularity

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def d_dense_hidden(self) -> int:
        return self.d_dense or self.top_k * self.d_expert

    @property
    def weight_init_std(self) -> float:
        """The std weights are drawn with (``init_std``, or the width rule when it is None)."""
        return self.init_std if self.init_std is not None else 0.5 / math.sqrt(self.d_model)

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "max_seq_len",
            "d_model",
            "n_layers",
            "n_heads",
            "n_experts",
            "top_k",
            "d_expert",
            "granularity",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("n_kv_heads", "n_shared_experts", "n_dense_layers", "d_dense"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even (RoPE)")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.kv_heads}")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be <= n_experts={self.n_experts}")
        if self.d_expert % self.granularity:
            raise ValueError(f"d_expert={self.d_expert} must be divisible by granularity={self.granularity}")
        if self.n_dense_layers > self.n_layers:
            raise ValueError(f"n_dense_layers={self.n_dense_layers} exceeds n_layers={self.n_layers}")
        # the Literal annotations are the one list of choices (the YAML loader checks the same ones)
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(
                    f"{f.name} must be one of {', '.join(allowed)}, got {getattr(self, f.name)!r}"
                )
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError(f"init_std must be > 0 or null, got {self.init_std}")
        for name in ("aux_loss_coef", "z_loss_coef", "bias_update_rate", "norm_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
