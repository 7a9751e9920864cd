"""Shared fixtures. One Ray instance per test session: ray.init costs seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny shapes: one intra-op thread avoids OpenMP spin contention on a shared 2-core box
    (two threads were up to ~50x slower for the tiny model under load). Ray workers are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def regmix_dir() -> Path:
    path = SHARED / "data" / "regmix"
    if not (path / "train_mixture_1m.csv").exists():
        pytest.skip("../shared/data/regmix not present")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """A small local Ray shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_ACCEPT_CALLS_FROM_ALL_NODES", "1")
        ray.init(
            num_cpus=2,
            object_store_memory=300 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    # left running for the rest of the session; pytest exit tears it down


@pytest.fixture(scope="session")
def markov_tokens(tmp_path_factory) -> Path:
    """Four Markov-chain domains of unequal size (d3 is small, to exercise epochs and the cap)."""
    from moemix.proxies.synthetic import write_markov_domains

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
def markov_data(markov_tokens):
    from moemix.token_shards import DomainTokens

    return DomainTokens(markov_tokens)
