"""Decoder-only Mixture-of-Experts LM. See ``model.py`` for the training-loop contract."""

from moemix.moe_model.config import MoEConfig
from moemix.moe_model.model import MoEOutput, MoETransformer

__all__ = ["MoEConfig", "MoEOutput", "MoETransformer"]
