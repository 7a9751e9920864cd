"""mixture.json: the one file users consume. Written and read only through this module.

Every write is validated against the JSON Schema shipped next to this file and then written
atomically; every read is validated too, so a hand-edited or truncated file fails loudly with the
file name and the failing key instead of silently training on a wrong mixture.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from moemix._io import to_jsonable, write_json_atomic
from moemix.errors import MoemixError

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("mixture.schema.json")
WEIGHT_SUM_TOL = 1e-9


@dataclass
class DomainWeight:
    name: str = ""
    weight: float = 0.0
    tokens: int | None = None


@dataclass
class TargetInfo:
    name: str = "target"
    description: str | None = None


@dataclass
class Baselines:
    uniform: float | None = None
    natural: float | None = None


@dataclass
class ProposerInfo:
    name: str = "simulate"
    constraints: dict[str, Any] | None = None
    # why this search method, when the config left the choice to ``auto``
    why: str | None = None


@dataclass
class ScaleTransfer:
    spearman: float | None = None
    n: int = 0
    warning: str | None = None


@dataclass
class Decision:
    """What the do-no-harm guard did: ship the optimum, shrink it toward the fallback baseline, or ship
    the baseline (``shrink`` = the share of the step from the baseline to the optimum that was kept)."""

    action: str = "optimum"  # optimum | shrunk | baseline
    baseline: str = "uniform"
    predicted_gain: float | None = None
    noise: float | None = None
    shrink: float = 1.0
    reason: str | None = None
    # the fit's optimum before the guard (what a shrunk or baseline decision withheld) and its prediction
    optimum: dict[str, float] | None = None
    optimum_predicted_loss: float | None = None
    # the share of the step the guard keeps (``propose.harm_share``: how much of the gate's risk of harm
    # the predicted gain rules out) and where the predicted loss is least on the ray from the baseline
    # through the optimum, in steps (1 = the optimum)
    signal_share: float | None = None
    ray_optimum: float | None = None


@dataclass
class PretrainCheck:
    target_loss: dict[str, float | None] = field(default_factory=dict)
    beats_baselines: bool = False
    verdict: str = ""
    # per baseline pretrained next to the chosen mixture (not the chosen mixture itself): the chosen
    # mixture's gain over it as the fit predicted it and as pretraining measured it, so every run audits
    # the evidence the do-no-harm guard weighed
    gains: dict[str, dict[str, float | None]] | None = None


@dataclass
class MixtureDoc:
    domains: list[DomainWeight] = field(default_factory=list)
    target: TargetInfo = field(default_factory=TargetInfo)
    predicted_target_loss: float | None = None
    baselines: Baselines = field(default_factory=Baselines)
    predictor: str = "auto"
    cv_spearman: float | None = None
    n_proxies: int = 0
    n_failed_proxies: int = 0
    domains_fingerprint: str | None = None
    created_at: str = ""
    moemix_version: str = ""
    schema_version: int = SCHEMA_VERSION
    cv: dict[str, float | int | None] | None = None
    plots: dict[str, str] | None = None
    # other report files (cv.json, explain.json), name -> path relative to the mixture.json
    reports: dict[str, str] | None = None
    proposer: ProposerInfo | None = None
    scale_transfer: ScaleTransfer | None = None
    notes: list[str] | None = None
    decision: Decision | None = None
    pretrain_check: PretrainCheck | None = None

    @property
    def weights(self) -> dict[str, float]:
        return {d.name: float(d.weight) for d in self.domains}

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _normalized(doc: MixtureDoc) -> MixtureDoc:
    """Copy of ``doc`` with weights renormalised in float64 and defaults for stamp fields filled."""
    from moemix import __version__

    ws = [float(d.weight) for d in doc.domains]
    if not ws or any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
        raise MoemixError("mixture: weights must be finite, >= 0 and not all zero")
    total = math.fsum(ws)
    domains = [
        DomainWeight(name=d.name, weight=float(w / total), tokens=None if d.tokens is None else int(d.tokens))
        for d, w in zip(doc.domains, ws)
    ]
    return dataclasses.replace(
        doc,
        domains=domains,
        created_at=doc.created_at or utc_now_iso(),
        moemix_version=doc.moemix_version or __version__,
    )


def _drop_none_optionals(obj: dict) -> dict:
    optional = {"cv", "plots", "reports", "proposer", "scale_transfer", "notes", "decision", "pretrain_check"}
    return {k: v for k, v in obj.items() if not (k in optional and v is None)}


def _check(obj: Any, where: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = "/".join(str(p) for p in e.absolute_path) or "<root>"
        msg = e.message.replace("\n", " ")
        if len(msg) > 200:
            msg = msg[:200] + "..."
        raise MoemixError(f"{where}: invalid mixture at key '{key}': {msg}")
    names = [d["name"] for d in obj["domains"]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MoemixError(f"{where}: invalid mixture at key 'domains': duplicate domain {dup[0]!r}")
    total = math.fsum(float(d["weight"]) for d in obj["domains"])
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise MoemixError(f"{where}: invalid mixture at key 'domains': weights sum to {total!r}, not 1")


def mixture_to_dict(doc: MixtureDoc) -> dict:
    return _drop_none_optionals(to_jsonable(_normalized(doc)))


def write_mixture(path: str | Path, doc: MixtureDoc) -> None:
    """Normalise, validate against the shipped JSON Schema, then write atomically."""
    obj = mixture_to_dict(doc)
    _check(obj, str(path))
    write_json_atomic(path, obj)


def _from_obj(obj: dict) -> MixtureDoc:
    def sub(cls, v):
        return None if v is None else cls(**v)

    return MixtureDoc(
        schema_version=obj["schema_version"],
        domains=[DomainWeight(**d) for d in obj["domains"]],
        target=TargetInfo(**obj["target"]),
        predicted_target_loss=obj["predicted_target_loss"],
        baselines=Baselines(uniform=obj["baselines"].get("uniform"), natural=obj["baselines"].get("natural")),
        predictor=obj["predictor"],
        cv_spearman=obj["cv_spearman"],
        n_proxies=obj["n_proxies"],
        n_failed_proxies=obj["n_failed_proxies"],
        domains_fingerprint=obj["domains_fingerprint"],
        created_at=obj["created_at"],
        moemix_version=obj["moemix_version"],
        cv=obj.get("cv"),
        plots=obj.get("plots"),
        reports=obj.get("reports"),
        proposer=sub(ProposerInfo, obj.get("proposer")),
        scale_transfer=sub(ScaleTransfer, obj.get("scale_transfer")),
        notes=obj.get("notes"),
        decision=sub(Decision, obj.get("decision")),
        pretrain_check=sub(PretrainCheck, obj.get("pretrain_check")),
    )


def load_mixture(path: str | Path) -> MixtureDoc:
    """Read and validate a mixture.json; any problem -> MoemixError naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MoemixError(f"{path}: mixture file not found") from None
    except OSError as e:
        raise MoemixError(f"{path}: cannot read mixture file ({e.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise MoemixError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(obj, dict):
        raise MoemixError(f"{path}: invalid mixture at key '<root>': expected a JSON object")
    _check(obj, str(path))
    return _from_obj(obj)
