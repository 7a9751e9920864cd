from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from moemix._io import to_jsonable
from moemix.configtools import from_dict
from moemix.errors import MoemixError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    every: int | Literal["never"] = 1

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] | None = None
    flag: bool = False


def test_builds_nested_and_coerces_ints_to_floats():
    cfg = from_dict(Outer, {"name": "y", "inner": {"lr": 1, "steps": 5}, "weights": {"a": 1}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 5
    assert cfg.weights == {"a": 1.0}
    assert to_jsonable(cfg)["inner"] == {"lr": 1.0, "steps": 5, "kind": "a", "every": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"lrr": 1}}, "cfg.inner: unknown key 'lrr'"),
        ({"inner": {"steps": "many"}}, "cfg.inner.steps: expected an integer"),
        ({"inner": {"steps": 1.5}}, "cfg.inner.steps: expected an integer"),
        ({"inner": {"kind": "c"}}, "cfg.inner.kind: 'c' is not one of"),
        ({"inner": {"every": "often"}}, "cfg.inner.every: expected an integer or 'never', got 'often'"),
        ({"tags": "a"}, "cfg.tags: expected a list"),
        ({"flag": "yes"}, "cfg.flag: expected true or false"),
        ({"inner": {"steps": 0}}, "cfg.inner: steps must be >= 1"),
        ({"inner": [1]}, "cfg.inner: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(MoemixError) as e:
        from_dict(Outer, data, where="cfg")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bool_is_not_an_int():
    with pytest.raises(MoemixError, match="expected an integer"):
        from_dict(Inner, {"steps": True})


def test_every_preset_is_a_valid_config():
    """The shipped presets (the demo, and the documented cluster example) stay loadable as the code
    evolves."""
    from moemix.pipeline.config import PRESETS, Config, preset_dict

    for name in PRESETS:
        cfg = from_dict(Config, preset_dict(name), where=f"preset {name}")
        assert cfg.proxies.sampler.n_mixtures >= 3
    cluster = from_dict(Config, preset_dict("cluster-gpu"))
    assert cluster.pretrain.use_gpu and cluster.domains.mode == "label+cluster"


def test_loading_and_checking_a_config_imports_no_numerical_library():
    # `moemix status`, `moemix config` and `moemix plan` start by loading a config: they must not wait
    # seconds for torch or scipy. The config dataclasses live apart from the code that uses them, and
    # the packages' __init__ resolve their exports on first use (moemix._lazy)
    import subprocess
    import sys

    heavy = ("torch", "scipy", "sklearn", "lightgbm", "ray", "pandas")
    code = (
        "import sys; "
        "from moemix.pipeline.config import PRESETS, load_config_or_preset; "
        "[load_config_or_preset(name) for name in PRESETS]; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"loading the presets imported {out.strip()}"
