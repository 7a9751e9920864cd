from __future__ import annotations

import json

import pytest

import moemix
from moemix.errors import MoemixError
from moemix.mixing.schema import Baselines, DomainWeight, MixtureDoc, TargetInfo, load_mixture, write_mixture


def _doc(**kw):
    base = dict(
        domains=[
            DomainWeight("web", 0.7, 100),
            DomainWeight("code", 0.2, 50),
            DomainWeight("math", 0.1, None),
        ],
        target=TargetInfo("target", "mean valid loss"),
        predicted_target_loss=3.2,
        baselines=Baselines(uniform=3.5, natural=3.4),
        predictor="auto",
        cv_spearman=0.95,
        n_proxies=32,
        n_failed_proxies=1,
        domains_fingerprint="abc",
    )
    base.update(kw)
    return MixtureDoc(**base)


def test_roundtrip_and_normalisation(tmp_path):
    p = tmp_path / "mixture.json"
    doc = _doc(domains=[DomainWeight("a", 1 / 3), DomainWeight("b", 1 / 3), DomainWeight("c", 1 / 3 + 1e-7)])
    write_mixture(p, doc)
    back = moemix.load_mixture(p)
    assert abs(sum(back.weights.values()) - 1.0) <= 1e-9
    assert list(back.weights) == ["a", "b", "c"]
    assert back.created_at.endswith("Z") and back.moemix_version == moemix.__version__
    obj = json.loads(p.read_text())
    assert "notes" not in obj and obj["schema_version"] == 1


def test_bad_file_names_file_and_key(tmp_path):
    p = tmp_path / "mixture.json"
    write_mixture(p, _doc())
    obj = json.loads(p.read_text())
    obj["domains"][1]["weight"] = -0.2
    p.write_text(json.dumps(obj))
    with pytest.raises(MoemixError, match=r"mixture.json.*domains/1/weight"):
        load_mixture(p)
    obj["domains"][1]["weight"] = 0.25  # valid per item but sum != 1
    p.write_text(json.dumps(obj))
    with pytest.raises(MoemixError, match="sum to"):
        load_mixture(p)
    del obj["baselines"]
    p.write_text(json.dumps(obj))
    with pytest.raises(MoemixError, match="baselines"):
        load_mixture(p)
    p.write_text("{not json")
    with pytest.raises(MoemixError, match="not valid JSON"):
        load_mixture(p)
    with pytest.raises(MoemixError, match="not found"):
        load_mixture(tmp_path / "missing.json")


def test_write_rejects_invalid_and_leaves_nothing(tmp_path):
    p = tmp_path / "mixture.json"
    with pytest.raises(MoemixError, match="duplicate"):
        write_mixture(p, _doc(domains=[DomainWeight("a", 0.5), DomainWeight("a", 0.5)]))
    with pytest.raises(MoemixError):
        write_mixture(p, _doc(domains=[DomainWeight("a", float("nan"))]))
    assert list(tmp_path.iterdir()) == []
