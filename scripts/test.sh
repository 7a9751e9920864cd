#!/usr/bin/env bash
# The test suite (slow end-to-end tests included). Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check src tests benchmarks
"$ROOT/.venv/bin/ruff" format --check src tests benchmarks
exec "$ROOT/.venv/bin/python" -m pytest "$@"
