"""Mixture sampling, loss predictors, proposers and the mixture.json schema.

Pipeline entry points: ``sample_mixtures`` (swarm), ``fit_runs`` / ``load_fit`` (fit step),
``propose`` / ``write_proposal`` (propose step: plots + reports + mixture.json), ``load_mixture`` (users).
"""

from typing import TYPE_CHECKING

from moemix._lazy import lazy_exports

if TYPE_CHECKING:
    from moemix.mixing.config import FitConfig, ProposeConfig
    from moemix.mixing.export import write_proposal
    from moemix.mixing.fit import FitResult, fit_runs, load_fit
    from moemix.mixing.propose import Proposal, proposal_to_doc, propose, propose_next_batch
    from moemix.mixing.sampling import SamplerConfig, sample_mixtures
    from moemix.mixing.schema import MixtureDoc, load_mixture, write_mixture
    from moemix.mixing.search import SearchConfig, SearchResult, iterative_search
    from moemix.mixing.transfer import scale_transfer

_EXPORTS = {
    "FitConfig": "moemix.mixing.config",
    "ProposeConfig": "moemix.mixing.config",
    "write_proposal": "moemix.mixing.export",
    "FitResult": "moemix.mixing.fit",
    "fit_runs": "moemix.mixing.fit",
    "load_fit": "moemix.mixing.fit",
    "Proposal": "moemix.mixing.propose",
    "proposal_to_doc": "moemix.mixing.propose",
    "propose": "moemix.mixing.propose",
    "propose_next_batch": "moemix.mixing.propose",
    "SamplerConfig": "moemix.mixing.sampling",
    "sample_mixtures": "moemix.mixing.sampling",
    "MixtureDoc": "moemix.mixing.schema",
    "load_mixture": "moemix.mixing.schema",
    "write_mixture": "moemix.mixing.schema",
    "SearchConfig": "moemix.mixing.search",
    "SearchResult": "moemix.mixing.search",
    "iterative_search": "moemix.mixing.search",
    "scale_transfer": "moemix.mixing.transfer",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = [
    "FitConfig",
    "FitResult",
    "MixtureDoc",
    "ProposeConfig",
    "Proposal",
    "SamplerConfig",
    "SearchConfig",
    "SearchResult",
    "fit_runs",
    "iterative_search",
    "load_fit",
    "load_mixture",
    "propose",
    "propose_next_batch",
    "proposal_to_doc",
    "sample_mixtures",
    "scale_transfer",
    "write_mixture",
    "write_proposal",
]
