"""Fixtures for the pipeline tests: a tiny config that runs every stage in about a minute."""

from __future__ import annotations

import copy

import pytest

# the proxy and the pretrain model are the same tiny MoE here
TINY_MODEL = {
    "vocab_size": 512,
    "max_seq_len": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "n_experts": 4,
    "top_k": 2,
    "d_expert": 32,
}

TINY = {
    "domains": {
        "sources": [],
        "mode": "label",
        "max_docs_per_domain": 150,
        "tokenizer": {"vocab_size": 512, "train_sample_bytes": 400_000},
    },
    "proxies": {
        "sampler": {"n_mixtures": 8},
        # one round keeps these tests about the stages' mechanics, and the suite's time, down; rounds:
        # auto (the default) runs in tests/pipeline/test_rounds.py and the end-to-end retarget
        "rounds": 1,
        "model": dict(TINY_MODEL),
        "train": {
            "steps": 12,
            "batch_size": 8,
            "seq_len": 32,
            "eval_tokens": 512,
            "log_every": 6,
            "measure_mfu": False,
            "num_threads": 1,
        },
        # the first 3 mixtures again with a wider proxy: rank agreement goes into mixture.json
        "scale_check": {
            "n_mixtures": 3,
            "model": {
                "vocab_size": 512,
                "max_seq_len": 32,
                "d_model": 48,
                "n_layers": 1,
                "n_heads": 2,
                "n_experts": 4,
                "top_k": 2,
                "d_expert": 48,
            },
        },
    },
    # one start per law, no run-effect backfitting and a small bootstrap: the tiny proxies' curves are
    # nearly flat, so each least-squares start takes ~250 steps, and the default fit (four starts, two
    # backfitting passes, 16 bootstrap refits) was most of the slowest tests' time. These tests are about
    # the stages' mechanics; tests/mixing/test_scaling_law.py covers the law's own options
    "fit": {
        "predictor": "scaling_law",
        "cv_folds": 3,
        "predictor_params": {"n_restarts": 1, "bootstrap": 4, "run_effect_rounds": 0},
    },
    "pretrain": {
        "num_workers": 1,
        "checkpoint_every": 5,
        "model": dict(TINY_MODEL),
        "train": {
            "steps": 10,
            "batch_size": 8,
            "seq_len": 32,
            "eval_tokens": 512,
            "log_every": 5,
            "measure_mfu": False,
            "num_threads": 1,
        },
    },
    "ray": {"num_cpus": 2, "object_store_memory_mb": 200},
}


@pytest.fixture
def tiny_config() -> dict:
    """A fresh copy per test (tests edit it)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def small_swarm_config(tmp_path, tiny_config):
    """The tiny config with a plain swarm of 8 proxies (no scale check, uniform once), written to
    ``tmp_path/tiny.yaml``; returns that path."""
    import yaml

    tiny_config["proxies"]["scale_check"] = {"n_mixtures": 0}
    tiny_config["proxies"]["uniform_seeds"] = 1
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path
