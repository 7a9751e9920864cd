"""What the run report shows, read from a run directory's files alone.

Like ``moemix status``, nothing here starts Ray, imports torch or needs the config's sources, so a
report can be made on a laptop from a copy of the run dir, on shared storage while the run goes on, or
after it failed. Every reader tolerates a missing or half-written file (the section then says its data
is absent), because a report of a partial run is as useful as one of a finished run.

Which stage directory feeds the page: a run dir may hold several keys of a stage after config edits.
The pipeline passes the exact directories it just ran; otherwise the report follows the published
``RUN_DIR/mixture.json`` back through the manifests' inputs (propose -> fit -> proxies, propose ->
domains, pretrain -> propose), and falls back to the newest directory of a stage where no manifest says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# the pipeline's stages in order (moemix.pipeline.STAGES, which a test holds this equal to): not imported,
# so that the pipeline's config can import this package's TrackingConfig without a cycle
STAGES = ("domains", "proxies", "fit", "propose", "pretrain")
PRETRAIN_RUNS = ("chosen", "uniform", "natural")
# a pretrain stage's map from each mixture it pretrained (chosen, uniform, natural) to that run's
# directory in the store RUN_DIR/pretrain/runs/, relative to the stage: a baseline is trained once and
# shared by every pretrain stage of the same model, budget and tokens
PRETRAIN_RUN_DIRS = "runs.json"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole records of a JSON-lines file (a line being written is skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def pretrain_run_dirs(stage_path: Path) -> dict[str, Path]:
    """Each pretrained mixture's run directory: from the stage's ``runs.json`` (written before training,
    so a run in flight is found), else ``<stage>/<name>/`` (run dirs written before the store)."""
    listed = read_json(stage_path / PRETRAIN_RUN_DIRS)
    if isinstance(listed, dict):
        return {str(name): stage_path / str(rel) for name, rel in listed.items()}
    return {name: stage_path / name for name in PRETRAIN_RUNS if (stage_path / name).is_dir()}


@dataclass
class StageDir:
    name: str
    path: Path
    manifest: dict[str, Any] | None

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def inputs(self) -> dict[str, str]:
        return dict((self.manifest or {}).get("inputs", {}))

    @property
    def outputs(self) -> dict[str, Any]:
        return dict((self.manifest or {}).get("outputs", {}))


@dataclass
class ReportData:
    run_dir: Path
    generated_at: str
    stages: dict[str, StageDir | None]
    domains: list[str] = field(default_factory=list)
    natural: dict[str, float] | None = None  # each domain's share of training tokens
    mixture: dict[str, Any] | None = None  # the mixture.json document
    mixture_path: Path | None = None
    cv: dict[str, Any] | None = None  # cv.json (oof: {actual, predicted})
    proxies: list[dict[str, Any]] = field(default_factory=list)  # result.json of each proxy, swarm order
    proxies_planned: int = 0  # run ids the swarm has planned so far
    proxies_rounds: dict[str, Any] | None = (
        None  # {"run": rounds trained, "auto": why} once the swarm is done
    )
    pretrain_metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run -> metrics.jsonl
    pretrain_results: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> result.json
    comparison: dict[str, Any] | None = None  # comparison.json

    @property
    def chosen_weights(self) -> dict[str, float] | None:
        if not self.mixture:
            return None
        return {d["name"]: float(d["weight"]) for d in self.mixture.get("domains", [])}

    @property
    def expert_load(self) -> dict[str, Any] | None:
        """Per-domain routed counts of the chosen mixture's pretrained model at its final evaluation."""
        res = self.pretrain_results.get("chosen") or {}
        load = res.get("expert_load")
        return load if isinstance(load, dict) and load.get("counts") else None


def _stage_dirs(run_dir: Path, name: str) -> list[StageDir]:
    """Every key directory of a stage, newest first (the proxy store ``runs/`` is not a key)."""
    root = run_dir / name
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name != "runs" and not p.name.startswith(".")]
    dirs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [StageDir(name, p, read_json(p / MANIFEST)) for p in dirs]


def _pick(dirs: list[StageDir], key: str | None) -> StageDir | None:
    """The directory of ``key`` when a manifest named it, else the newest one."""
    if key is not None:
        return next((d for d in dirs if d.key == key), None)
    return dirs[0] if dirs else None


def _same_mixture(a: Any, b: Any) -> bool:
    """Two mixture.json documents of the same proposal: the pretraining verdict is added to the published
    copy later, so bytes differ; the creation stamp and weights do not."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return a.get("created_at") == b.get("created_at") and a.get("domains") == b.get("domains")


def locate_stages(run_dir: Path, given: Mapping[str, Path] | None = None) -> dict[str, StageDir | None]:
    """The stage directories the report describes (see the module docstring)."""
    all_dirs = {name: _stage_dirs(run_dir, name) for name in STAGES}
    if given:
        out: dict[str, StageDir | None] = {name: None for name in STAGES}
        for name, path in given.items():
            out[name] = StageDir(name, Path(path), read_json(Path(path) / MANIFEST))
        return out
    published = read_json(run_dir / "mixture.json")
    propose = next(
        (d for d in all_dirs["propose"] if _same_mixture(read_json(d.path / "mixture.json"), published)),
        None,
    ) or next((d for d in all_dirs["propose"] if d.complete), None)
    propose = propose or _pick(all_dirs["propose"], None)
    fit = _pick(all_dirs["fit"], propose.inputs.get("fit") if propose else None)
    proxies = _pick(all_dirs["proxies"], fit.inputs.get("proxies") if fit else None)
    domains = _pick(
        all_dirs["domains"],
        (propose.inputs.get("domains") if propose else None)
        or (proxies.inputs.get("domains") if proxies else None),
    )
    pretrain = None
    if propose is not None:
        pretrain = next((d for d in all_dirs["pretrain"] if d.inputs.get("propose") == propose.key), None)
    if pretrain is None:
        # no finished pretraining of this proposal: one in progress (no manifest yet), if any
        pretrain = next((d for d in all_dirs["pretrain"] if not d.complete), None)
    return {"domains": domains, "proxies": proxies, "fit": fit, "propose": propose, "pretrain": pretrain}


def _proxy_results(run_dir: Path, proxies: StageDir | None) -> tuple[list[dict[str, Any]], int]:
    """Each planned proxy's result.json (finished ones only) and how many the swarm planned."""
    if proxies is None:
        return [], 0
    plan = read_json(proxies.path / "swarm.json") or {}
    ids = list(dict.fromkeys(plan.get("run_ids", [])))
    if not ids and (proxies.path / "runs.parquet").exists():
        import pandas as pd  # only for a swarm written before swarm.json existed

        ids = pd.read_parquet(proxies.path / "runs.parquet", columns=["run_id"])["run_id"].tolist()
    store = run_dir / "proxies" / "runs"
    results = [r for i in ids if isinstance(r := read_json(store / i / "result.json"), dict)]
    results.sort(key=lambda r: (r.get("scale") != "base", r.get("scale", ""), r.get("index", 0)))
    return results, len(ids)


def collect(run_dir: str | Path, stages: Mapping[str, Path] | None = None) -> ReportData:
    """Everything the report shows, from ``run_dir``'s files (``stages``: the exact stage directories)."""
    run_dir = Path(run_dir)
    located = locate_stages(run_dir, stages)
    data = ReportData(
        run_dir=run_dir,
        generated_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        stages=located,
    )
    dom = located["domains"]
    if dom is not None and dom.complete:
        data.domains = list(dom.outputs.get("domains", []))
        tokens = dom.outputs.get("train_tokens", {})
        total = sum(tokens.values())
        if total > 0:
            data.natural = {d: tokens.get(d, 0) / total for d in data.domains}

    propose = located["propose"]
    published = run_dir / "mixture.json"
    # the published copy carries the pretraining verdict; the stage's own copy is the one of a partial
    # run. Given stages without a propose stage (a pretraining of a given mixture) have no mixture.json
    candidates = (published, propose.path / "mixture.json" if propose else None)
    for path in candidates if propose is not None or stages is None else ():
        if path is None:
            continue
        doc = read_json(path)
        if isinstance(doc, dict) and (propose is None or path != published or _matches(doc, propose)):
            data.mixture, data.mixture_path = doc, path
            break
    if data.mixture and not data.domains:
        data.domains = [d["name"] for d in data.mixture.get("domains", [])]
    if data.mixture and data.natural is None:
        tokens = {d["name"]: d.get("tokens") or 0 for d in data.mixture.get("domains", [])}
        total = sum(tokens.values())
        data.natural = {d: t / total for d, t in tokens.items()} if total > 0 else None

    fit = located["fit"]
    if fit is not None:
        cv = read_json(fit.path / "cv.json")
        data.cv = cv if isinstance(cv, dict) else None

    data.proxies, data.proxies_planned = _proxy_results(run_dir, located["proxies"])
    if located["proxies"] is not None:
        data.proxies_rounds = located["proxies"].outputs.get("rounds")
    if not data.domains:
        for r in data.proxies:
            data.domains += [d for d in r.get("mixture", {}) if d not in data.domains]

    pre = located["pretrain"]
    if pre is not None:
        comp = read_json(pre.path / "comparison.json")
        data.comparison = comp if isinstance(comp, dict) else None
        for name, path in pretrain_run_dirs(pre.path).items():
            metrics = read_jsonl(path / "metrics.jsonl")
            if metrics:
                data.pretrain_metrics[name] = metrics
            res = read_json(path / "result.json")
            if isinstance(res, dict):
                data.pretrain_results[name] = res
    return data


def _matches(doc: dict[str, Any], propose: StageDir) -> bool:
    """Whether the published mixture.json is the proposal of ``propose`` (not one of another key)."""
    return _same_mixture(doc, read_json(propose.path / "mixture.json"))
