"""The pretraining verdict: chosen vs uniform and natural, recorded in mixture.json with a warning on a
loss."""

from __future__ import annotations

import logging

import pytest

from moemix.mixing.schema import DomainWeight, MixtureDoc, load_mixture, write_mixture
from moemix.pipeline.stages import annotate_mixture, pretrain_verdict


def _comparison(chosen: float, uniform: float, natural: float, same_as: str | None = None) -> dict:
    return {
        "chosen": {"target_loss": chosen, "same_as": None},
        "uniform": {"target_loss": uniform, "same_as": same_as},
        "natural": {"target_loss": natural, "same_as": None},
    }


def _mixture(path):
    write_mixture(
        path,
        MixtureDoc(
            domains=[DomainWeight("a", 0.7), DomainWeight("b", 0.3)],
            predictor="linear",
            notes=["an earlier note"],
        ),
    )
    return path


def test_verdict_needs_a_win_over_every_baseline():
    assert pretrain_verdict(_comparison(4.0, 4.1, 4.2)).beats_baselines
    lost = pretrain_verdict(_comparison(4.15, 4.1, 4.2))
    assert (
        not lost.beats_baselines and "uniform" in lost.verdict and "natural" not in lost.verdict.split("(")[0]
    )
    assert not pretrain_verdict(_comparison(4.2, 4.1, 4.0)).beats_baselines
    # the guard shipped uniform itself: a tie with its own twin is no loss, and the verdict says what it is
    same = pretrain_verdict(_comparison(4.1, 4.1, 4.2, same_as="chosen"))
    assert same.beats_baselines
    assert same.verdict == "chosen 4.1000 is the uniform mixture, beats natural 4.2000"


def test_a_loss_is_a_field_a_note_and_a_warning_in_mixture_json(tmp_path, caplog):
    path = _mixture(tmp_path / "mixture.json")
    with caplog.at_level(logging.WARNING):
        check = annotate_mixture(path, _comparison(4.3, 4.1, 4.2))
    doc = load_mixture(path)
    assert doc.pretrain_check == check and not doc.pretrain_check.beats_baselines
    assert doc.pretrain_check.target_loss == {"chosen": 4.3, "uniform": 4.1, "natural": 4.2}
    assert doc.notes[0] == "an earlier note" and doc.notes[-1].startswith(
        "pretraining: WARNING: chosen 4.3000"
    )
    assert any("does not beat uniform, natural" in r.message for r in caplog.records)
    # re-annotating (a cached re-run) replaces the note instead of adding another
    annotate_mixture(path, _comparison(4.0, 4.1, 4.2))
    doc = load_mixture(path)
    assert doc.pretrain_check.beats_baselines and doc.notes == ["an earlier note"]


def test_the_verdict_audits_the_predicted_gain_against_the_measured_one(tmp_path):
    """mixture.json carries, per baseline, the chosen mixture's gain as the fit predicted it and as
    pretraining measured it; a baseline the guard shipped (the chosen mixture itself) has none."""
    from moemix.mixing.schema import Baselines

    path = tmp_path / "mixture.json"
    write_mixture(
        path,
        MixtureDoc(
            domains=[DomainWeight("a", 0.7), DomainWeight("b", 0.3)],
            predictor="scaling_law",
            predicted_target_loss=4.0,
            baselines=Baselines(uniform=4.5, natural=4.25),
        ),
    )
    check = annotate_mixture(path, _comparison(3.5, 3.9, 3.6))
    doc = load_mixture(path)
    assert doc.pretrain_check == check
    assert check.gains.keys() == {"uniform", "natural"}
    assert check.gains["uniform"] == {"predicted": 0.5, "measured": pytest.approx(0.4)}
    assert check.gains["natural"] == {"predicted": 0.25, "measured": pytest.approx(0.1)}
    assert check.verdict.endswith(
        "; gain over uniform: predicted +0.5000, measured +0.4000; "
        "gain over natural: predicted +0.2500, measured +0.1000"
    ), check.verdict
    # re-annotating (a cached re-run) keeps one account; the guard's own uniform is no gain to audit
    again = annotate_mixture(path, _comparison(3.9, 3.9, 3.6, same_as="chosen"))
    assert again.gains.keys() == {"natural"} and again.verdict.count("gain over") == 1, again.verdict
