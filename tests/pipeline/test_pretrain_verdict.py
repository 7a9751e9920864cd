"""The pretraining verdict: chosen vs uniform and natural, recorded in mixture.json with a warning on a
loss."""

from __future__ import annotations

import logging

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
