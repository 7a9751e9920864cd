"""The run configuration: one YAML file validated into typed dataclasses.

Each stage's config dataclass lives next to the code it configures; this module only composes
them, loads YAML strictly (unknown keys, wrong types and missing paths are one-line errors) and
provides the presets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from moemix._io import to_jsonable
from moemix.config_fields import execution_only
from moemix.configtools import from_dict
from moemix.domains.config import DomainsConfig
from moemix.errors import MoemixError
from moemix.mixing.config import FitConfig, ProposeConfig
from moemix.moe_model.config import MoEConfig
from moemix.proxies.config import ProxiesConfig
from moemix.report.tracking import TrackingConfig
from moemix.training.config import ParallelConfig, TrainConfig

PRESETS = ("demo", "cluster-gpu")


@dataclass
class RayConfig:
    """Where the pipeline runs. ``address: null`` starts a local single-node Ray unless RAY_ADDRESS is set."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory_mb: int = 512
    include_dashboard: bool = False

    def validate(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError("ray.num_cpus must be >= 1")
        if self.object_store_memory_mb < 75:
            raise ValueError("ray.object_store_memory_mb must be >= 75")


@dataclass
class PretrainConfig:
    """The full MoE run on the chosen mixture, with a same-token uniform-mixture run for comparison."""

    enabled: bool = True
    model: MoEConfig = field(default_factory=MoEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    num_workers: int = 1
    cpus_per_worker: float = execution_only(1.0)
    use_gpu: bool = False
    compare_uniform: bool = True
    compare_natural: bool = True  # and on the natural (token-proportional) mixture
    checkpoint_every: int = execution_only(100)
    # how the workers share the model: FSDP2 over all of them by default (moemix.training.parallel)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # usable memory of one worker's device in GiB (2^30 bytes, as `moemix plan` prints; an "80 GB" GPU has
    # about 79.6): the pipeline refuses a run its planner says cannot fit (moemix.training.memory_plan).
    # null: not checked
    device_memory_gb: float | None = execution_only(None)
    # how many of the comparison's runs (chosen, uniform, natural) may train at once; 0: as many as the
    # cluster's free CPUs and GPUs hold when the stage starts
    max_concurrent_runs: int = execution_only(0)

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ValueError("pretrain.num_workers must be >= 1")
        if self.max_concurrent_runs < 0:
            raise ValueError(f"pretrain.max_concurrent_runs must be >= 0, got {self.max_concurrent_runs}")
        if self.checkpoint_every < 1:
            raise ValueError("pretrain.checkpoint_every must be >= 1")
        if self.device_memory_gb is not None and self.device_memory_gb <= 0:
            raise ValueError(f"pretrain.device_memory_gb must be > 0 or null, got {self.device_memory_gb}")
        self.parallel.validate()
        try:
            self.parallel.mesh_shape(self.num_workers)
        except ValueError as e:
            raise ValueError(f"pretrain.{e}") from None


@dataclass
class Config:
    seed: int = 0
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    proxies: ProxiesConfig = field(default_factory=ProxiesConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    propose: ProposeConfig = field(default_factory=ProposeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # MLflow tracking (moemix.report.tracking): how a run is watched, in no cache key
    tracking: TrackingConfig = execution_only(default_factory=TrackingConfig)


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MoemixError(f"{where}: malformed YAML{pos}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MoemixError(f"{where}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise MoemixError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    text = resources.files("moemix.pipeline").joinpath("presets", f"{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a config file (or the demo preset when ``path`` is None).

    A file may start from a preset with a top-level ``preset: demo`` key; its own keys override it.
    Relative source paths are resolved against the config file's directory.
    """
    if path is None:
        data = preset_dict("demo")
        where, base_dir = "preset demo", Path.cwd()
    else:
        p = Path(path)
        if not p.exists():
            raise MoemixError(f"config file not found: {p}")
        if p.is_dir():
            raise MoemixError(f"config path is a directory, expected a YAML file: {p}")
        where, base_dir = str(p), p.resolve().parent
        data = _read_yaml(p.read_text(), where)
        preset = data.pop("preset", None)
        if preset is not None:
            if not isinstance(preset, str):
                raise MoemixError(f"{where}: preset: expected a preset name, got {preset!r}")
            data = _merge(preset_dict(preset), data)
    if overrides:
        data = _merge(data, overrides)
    try:
        cfg = from_dict(Config, data, where="")
    except MoemixError as e:
        raise MoemixError(f"{where}: {e}") from None
    _resolve_source_paths(cfg, base_dir, where)
    return cfg


def load_config_or_preset(name_or_path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """A config file, or a preset's name (``cluster-gpu``) where no file of that name exists. A preset's
    source paths are not checked: they name a cluster's storage, not this machine's (``moemix config``
    and ``moemix plan`` read no data)."""
    if name_or_path in PRESETS and not Path(name_or_path).exists():
        where = f"preset {name_or_path}"
        try:
            return from_dict(Config, _merge(preset_dict(name_or_path), overrides or {}), where="")
        except MoemixError as e:
            raise MoemixError(f"{where}: {e}") from None
    return load_config(name_or_path, overrides=overrides)


def _resolve_source_paths(cfg: Config, base_dir: Path, where: str) -> None:
    for i, src in enumerate(cfg.domains.sources):
        if getattr(src, "path", None):
            p = Path(src.path).expanduser()
            if not p.is_absolute():
                p = base_dir / p
            has_glob = any(ch in str(p) for ch in "*?[")
            if not has_glob and not p.exists():
                raise MoemixError(f"{where}: domains.sources[{i}].path: no such file or directory: {p}")
            src.path = str(p)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_jsonable(cfg), sort_keys=False)
