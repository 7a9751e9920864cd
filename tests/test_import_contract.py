"""The package table in docs/ARCHITECTURE.md is the import contract; this test holds the code to it.

Static: every import in every module (lazy ones inside functions too) must name a moemix package or a
third-party module the importing package's row lists. Dynamic: importing every module of the packages
that must run without a cluster leaves ``ray`` (and ``moemix.ray_jobs``, ``moemix.cli``) unloaded.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "moemix"
RAY_FREE = ("kernels", "moe_model", "training", "proxies", "mixing", "domains", "pipeline")


def contract() -> dict[str, tuple[set[str], set[str]]]:
    """package -> (moemix packages it may import, third-party modules it may import), from the doc's table."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Packages, their jobs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = lambda cell: set(re.findall(r"`([^`]+)`", cell))  # noqa: E731
        rows[cells[0].strip("`")] = (names(cells[2]), names(cells[3]))
    return rows


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(path: Path) -> set[str]:
    """Top-level names a module imports: 'moemix.<pkg>' for moemix's own, else the third-party root."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        for mod in mods:
            parts = mod.split(".")
            if parts[0] == "moemix":
                out.add("moemix." + parts[1] if len(parts) > 1 else "moemix")
            elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                out.add(parts[0])
    return out


def test_table_covers_every_package():
    rows = contract()
    packages = {package_of(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert packages <= set(rows), f"packages missing from the table: {sorted(packages - set(rows))}"
    for pkg, (own, _) in rows.items():
        assert own <= set(rows), f"{pkg} lists unknown moemix packages {sorted(own - set(rows))}"


def test_every_import_is_allowed_by_the_table():
    rows = contract()
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        pkg = package_of(path)
        if pkg == "__init__":
            continue  # the root re-exports errors and (lazily) mixing's loader
        own, third_party = rows[pkg]
        for name in sorted(imports_of(path)):
            if name == "moemix" or name == f"moemix.{pkg}":
                continue
            allowed = (
                name.removeprefix("moemix.") in own if name.startswith("moemix.") else name in third_party
            )
            if not allowed:
                violations.append(f"{path.relative_to(REPO)} imports {name}")
    assert not violations, "imports the table does not allow:\n" + "\n".join(violations)


@pytest.mark.parametrize("package", RAY_FREE)
def test_package_imports_without_ray(package):
    code = f"""
import importlib, json, pkgutil, sys
import moemix.{package} as pkg
for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(m.name)
banned = ("ray.", "moemix.ray_jobs", "moemix.cli")
print(json.dumps(sorted(n for n in sys.modules if n == "ray" or n.startswith(banned))))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing moemix.{package} loaded {loaded[:5]}"
