#!/usr/bin/env bash
# The whole pipeline on the built-in demo corpus in a local single-node Ray.
# Extra arguments go to `moemix run` (e.g. --out DIR, --set proxies.sampler.n_mixtures=8).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/moemix" run "$@"
