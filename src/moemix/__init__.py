"""moemix: choose pretraining data mixtures with proxy MoE swarms, then pretrain MoE LMs on them."""

from moemix.errors import MoemixError

__version__ = "0.1.0"

__all__ = ["MoemixError", "__version__", "load_mixture"]


def load_mixture(path):  # re-exported, typed at its definition
    """Load and validate a mixture.json written by moemix (see moemix.mixing.schema.load_mixture)."""
    from moemix.mixing.schema import load_mixture as _load

    return _load(path)
