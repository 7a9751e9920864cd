from __future__ import annotations

from pathlib import Path

import pytest

from moemix.proxies.shards import DomainTokens
from moemix.proxies.synthetic import write_markov_domains


@pytest.fixture(scope="session")
def markov_tokens(tmp_path_factory) -> Path:
    """Four Markov-chain domains of unequal size (d3 is small, to exercise epochs and the cap)."""
    path = tmp_path_factory.mktemp("markov") / "tokens"
    write_markov_domains(
        path,
        n_domains=4,
        vocab_size=64,
        train_tokens={"d0": 40_000, "d1": 30_000, "d2": 20_000, "d3": 3_000},
        valid_tokens=2_500,
        seed=0,
    )
    return path


@pytest.fixture()
def markov_data(markov_tokens) -> DomainTokens:
    return DomainTokens(markov_tokens)
