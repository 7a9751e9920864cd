"""benchmarks/predictor_transfer.py: which pretrained mixtures a predictor is scored on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import predictor_transfer as pt  # noqa: E402


def _run(mixture: dict[str, float], loss: dict[str, float]) -> dict[str, object]:
    return {"mixture": mixture, "loss": loss}


def test_each_distinct_mixture_is_scored_once_at_seed_zero() -> None:
    uni = {"a": 0.5, "b": 0.5}
    q = {
        "runs": {
            "chosen/mean": _run(uni, {"a": 3.0, "b": 4.0}),  # the mean target shipped uniform itself
            "uniform@seed0": _run(uni, {"a": 3.1, "b": 4.1}),
            "uniform@seed1": _run(uni, {"a": 3.2, "b": 4.2}),
            "chosen/a:1@seed1": _run({"a": 0.9, "b": 0.1}, {"a": 2.0, "b": 5.0}),
            "chosen/a:1": _run({"a": 1.8, "b": 0.2}, {"a": 2.1, "b": 5.1}),  # unnormalised weights
            "natural": _run({"b": 1.0}, {"a": 6.0, "b": 3.0}),  # a domain left out of the mixture
        }
    }
    names, W, L = pt.pretrained_mixtures(q, ["a", "b"])
    assert names == ["chosen/mean", "chosen/a:1", "natural"]
    np.testing.assert_allclose(W, [[0.5, 0.5], [0.9, 0.1], [0.0, 1.0]])
    np.testing.assert_allclose(L, [[3.0, 4.0], [2.1, 5.1], [6.0, 3.0]])
