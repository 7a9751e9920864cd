"""Decoder-only Mixture-of-Experts LM. See ``model.py`` for the training-loop contract."""

from typing import TYPE_CHECKING

from moemix._lazy import lazy_exports

if TYPE_CHECKING:
    from moemix.moe_model.config import MoEConfig
    from moemix.moe_model.model import MoEOutput, MoETransformer

_EXPORTS = {
    "MoEConfig": "moemix.moe_model.config",
    "MoEOutput": "moemix.moe_model.model",
    "MoETransformer": "moemix.moe_model.model",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = ["MoEConfig", "MoEOutput", "MoETransformer"]
