"""Where a run directory stands, read from its files alone (``moemix status RUN_DIR``).

Nothing here starts Ray or needs the config's sources: it reads manifests, the swarm plan, the proxy
store, pretraining's ``metrics.jsonl`` and the lock file, so it works on a laptop and on the cluster's
shared storage alike, while a run is going or after it ended. A run directory can hold several keys of
a stage (after config edits); the newest directory of each stage is the one reported, with the count of
older ones.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moemix.errors import MoemixError
from moemix.pipeline.run_lock import LOCK_NAME
from moemix.report.collect import pretrain_run_dirs

STAGES = ("domains", "proxies", "fit", "propose", "pretrain")


@dataclass
class StageStatus:
    name: str
    state: str  # complete | running | not started
    key: str | None = None
    path: str | None = None
    older: int = 0  # other keys of this stage in the run dir
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunStatus:
    run_dir: str
    stages: list[StageStatus]
    lock: str | None  # who holds the run dir now, None when free
    mixture: str | None  # RUN_DIR/mixture.json when it exists
    decision: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lock_holder(run_dir: Path) -> str | None:
    """The live holder of the run dir's lock, from the pid it recorded (a stale file of a killed run is
    free). Not a flock probe: probing would make a run starting at that instant fail to take it."""
    info = _read_json(run_dir / LOCK_NAME)
    if not isinstance(info, dict) or "pid" not in info:
        return None
    pid, host = int(info["pid"]), str(info.get("host", ""))
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return f"process {pid} on {host}"
    return f"process {pid} on {host} (another host: not checked)"


def _stage_dirs(run_dir: Path, name: str) -> list[Path]:
    root = run_dir / name
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name != "runs" and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)


def _proxies_detail(path: Path, store: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    if manifest is not None:
        out = manifest.get("outputs", {})
        ok, failed = int(out.get("n_ok", 0)), int(out.get("n_failed", 0))
        return {"ok": ok, "failed": failed, "total": ok + failed}
    plan = _read_json(path / "swarm.json") or {}
    ids = list(plan.get("run_ids", []))
    ok = failed = 0
    for run_id in ids:
        res = _read_json(store / run_id / "result.json")
        if isinstance(res, dict):
            ok += res.get("status") == "ok"
            failed += res.get("status") != "ok"
    return {"ok": ok, "failed": failed, "total": len(ids), "rounds": plan.get("rounds", 1)}


def _last_metrics(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue  # a line being written
    return None


def _planned_steps(run_dir: Path) -> int | None:
    try:
        from moemix.pipeline.config import load_config

        return load_config(run_dir / "config.resolved.yaml").pretrain.train.num_steps
    except (MoemixError, OSError, ValueError, AttributeError):
        return None


def _pretrain_detail(path: Path, run_dir: Path) -> dict[str, Any]:
    steps = _planned_steps(run_dir)
    runs = {}
    for name, sub in sorted(pretrain_run_dirs(path).items()):
        if not (sub / "metrics.jsonl").exists():
            continue
        last = _last_metrics(sub / "metrics.jsonl") or {}
        runs[name] = {
            "step": last.get("step"),
            "steps": last.get("total_steps", steps),  # the worker records its planned steps
            "loss": last.get("loss"),
            "done": (sub / "model.safetensors").exists(),
        }
    detail: dict[str, Any] = {"runs": runs}
    comparison = _read_json(path / "comparison.json")
    verdict = comparison.get("verdict") if isinstance(comparison, dict) else None
    if isinstance(verdict, dict):  # {target_loss, beats_baselines, verdict}
        verdict = verdict.get("verdict")
    if verdict:
        detail["verdict"] = str(verdict)
    return detail


def _detail(name: str, path: Path, run_dir: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    out = (manifest or {}).get("outputs", {})
    if name == "domains" and manifest is not None:
        tokens = out.get("train_tokens", {})
        return {"domains": len(out.get("domains", [])), "train_tokens": int(sum(tokens.values()))}
    if name == "proxies":
        return _proxies_detail(path, run_dir / "proxies" / "runs", manifest)
    if name == "fit" and manifest is not None:
        return {k: out[k] for k in ("predictor", "cv_spearman") if k in out}
    if name == "pretrain":
        return _pretrain_detail(path, run_dir)
    return {}


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path; a one-line MoemixError when it is not a run dir (reads no config: cheap)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MoemixError(f"{run_dir}: no such run directory")
    if not any((run_dir / s).is_dir() for s in STAGES) and not (run_dir / "config.resolved.yaml").exists():
        raise MoemixError(f"{run_dir}: not a moemix run directory (no stage directories in it)")
    return run_dir


def run_status(run_dir: str | Path) -> RunStatus:
    """The state of every stage of ``run_dir``; a one-line MoemixError when it is not a run dir."""
    run_dir = check_run_dir(run_dir)
    stages = []
    for name in STAGES:
        dirs = _stage_dirs(run_dir, name)
        if not dirs:
            stages.append(StageStatus(name, "not started"))
            continue
        path = dirs[0]
        manifest = _read_json(path / "manifest.json")
        stages.append(
            StageStatus(
                name,
                "complete" if manifest is not None else "running",
                key=path.name,
                path=str(path),
                older=len(dirs) - 1,
                detail=_detail(name, path, run_dir, manifest),
            )
        )
    mixture = run_dir / "mixture.json"
    doc = _read_json(mixture) if mixture.exists() else None
    decision = doc.get("decision") if isinstance(doc, dict) else None
    if isinstance(decision, dict):
        decision = {k: decision.get(k) for k in ("action", "baseline", "reason")}
    return RunStatus(
        run_dir=str(run_dir),
        stages=stages,
        lock=lock_holder(run_dir),
        mixture=str(mixture) if mixture.exists() else None,
        decision=decision,
    )


def format_status(st: RunStatus) -> str:
    """The human-readable table ``moemix status`` prints."""
    lines = [f"run dir   {st.run_dir}  ({'in use by ' + st.lock if st.lock else 'not running'})"]
    for s in st.stages:
        d = s.detail
        if s.name == "domains" and d:
            info = f"{d['domains']} domains, {d['train_tokens']:,} train tokens"
        elif s.name == "proxies" and d:
            info = f"{d['ok']}/{d['total']} proxies done" + (f", {d['failed']} failed" if d["failed"] else "")
        elif s.name == "fit" and d:
            info = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())
        elif s.name == "pretrain" and d.get("runs"):
            parts = []
            for name, r in d["runs"].items():
                step = f"step {r['step']}" + (f"/{r['steps']}" if r["steps"] else "")
                loss = f" train loss {r['loss']:.4f}" if isinstance(r["loss"], (int, float)) else ""
                parts.append(f"{name} {'done' if r['done'] else step}{loss}")
            info = "; ".join(parts)
        else:
            info = ""
        key = f"{s.key[:8]}" + (f" (+{s.older} older)" if s.older else "") if s.key else ""
        lines.append(f"{s.name:<9} {s.state:<11} {key:<18} {info}".rstrip())
    pre = next(s for s in st.stages if s.name == "pretrain")
    if pre.detail.get("verdict"):
        lines.append(f"verdict   {pre.detail['verdict']}")
    if st.decision:
        why = st.decision.get("reason") or "the fitted optimum"
        lines.append(f"decision  {st.decision['action']}: {why}")
    lines.append(f"mixture.json: {st.mixture or 'not written yet'}")
    return "\n".join(lines)
