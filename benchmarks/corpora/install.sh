#!/usr/bin/env bash
# Install the Debian packages that the evaluation corpora are built from (Debian 12 names).
# Usage: bash benchmarks/corpora/install.sh [prose|code|extra|languages|heldout|all]   (default: all; needs root or sudo)
# (extra: the APT package index, which the 'apt-get update' below writes)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
which="${1:-all}"
case "$which" in
  prose|code|extra|languages|heldout) corpora=("$which") ;;
  all) corpora=(prose code extra languages heldout) ;;
  *) echo "usage: $0 [prose|code|extra|languages|heldout|all]" >&2; exit 2 ;;
esac
pkgs=()
for c in "${corpora[@]}"; do
  read -r -a more <<< "$(python3 "$here/build.py" "$c" --list-packages)"
  pkgs+=("${more[@]}")
done
sudo=""
[[ "$(id -u)" == 0 ]] || sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${pkgs[@]}"
