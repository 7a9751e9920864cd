#!/usr/bin/env bash
# Create .venv in the repo root if missing and install moemix with its pinned dependencies.
# torch goes first on its own: left to resolve it as a dependency, pip pulls a multi-GB CUDA build.
# Idempotent: a stamp of the lock file and pyproject skips the work when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
TORCH_SPEC="${MOEMIX_TORCH_SPEC:-torch==2.13.0}"
stamp="$VENV/.moemix-installed"
want="$(cat "$ROOT/requirements-dev.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$VENV/bin/moemix" ]]; then
  exit 0
fi
echo "moemix: setting up $VENV (first run takes a few minutes)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.lock"  # the core pins plus the dev extra
"$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
echo "$want" > "$stamp"
