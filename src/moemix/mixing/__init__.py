"""Mixture sampling, loss predictors, proposers and the mixture.json schema.

Pipeline entry points: ``sample_mixtures`` (swarm), ``fit_runs`` / ``load_fit`` (fit step),
``propose`` / ``write_proposal`` (propose step: plots + reports + mixture.json), ``load_mixture`` (users).
"""

from moemix.mixing.export import write_proposal
from moemix.mixing.fit import FitConfig, FitResult, fit_runs, load_fit
from moemix.mixing.propose import Proposal, ProposeConfig, proposal_to_doc, propose, propose_next_batch
from moemix.mixing.sampling import SamplerConfig, sample_mixtures
from moemix.mixing.schema import MixtureDoc, load_mixture, write_mixture
from moemix.mixing.search import SearchConfig, SearchResult, iterative_search
from moemix.mixing.transfer import scale_transfer

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
