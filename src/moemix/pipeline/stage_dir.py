"""Content-addressed stage directories (Marin-style): a stage's output lives at a hash of its inputs.

``RUN_DIR/<stage>/<key>/`` where ``key = stable_hash(config, input keys, moemix version)``. A stage is
complete when ``manifest.json`` exists in that directory; the manifest is written last, atomically, so
a crash mid-stage leaves a directory without one, which the next run finishes or redoes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moemix import __version__
from moemix._io import stable_hash, write_json_atomic

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Stage:
    name: str
    key: str
    path: Path
    # the keys of the stages this one read (recorded in the manifest: which fit a mixture came from)
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_complete(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def start(self, fresh: bool = False) -> Path:
        """Create the directory. ``fresh`` wipes leftovers of an interrupted attempt first
        (for stages that cannot resume part-way; the swarm resumes per proxy instead)."""
        if fresh and self.path.exists() and not self.is_complete():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def complete(self, outputs: dict[str, Any], started: float | None = None) -> dict[str, Any]:
        info = {
            "stage": self.name,
            "key": self.key,
            "moemix_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": None if started is None else round(time.time() - started, 3),
            "inputs": dict(self.inputs),
            "outputs": outputs,
        }
        write_json_atomic(self.manifest_path, info)
        return info


def stage_key(config: Any, inputs: dict[str, str] | None = None) -> str:
    """The hash of what a stage's outputs depend on. Not the package version: a release that does not
    change a stage's outputs must not invalidate it, so each stage's key config carries its own format
    number, raised when the code changes what the stage writes."""
    return stable_hash({"config": config, "inputs": inputs or {}})


def stage_for(run_dir: str | Path, name: str, config: Any, inputs: dict[str, str] | None = None) -> Stage:
    key = stage_key(config, inputs)
    return Stage(name=name, key=key, path=Path(run_dir) / name / key, inputs=dict(inputs or {}))
