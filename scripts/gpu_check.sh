#!/usr/bin/env bash
# The GPU check, for a machine with CUDA torch and Triton but no network, Ray or LightGBM:
#   bash scripts/gpu_check.sh OUT_DIR
# 1. tests/kernels/test_cuda.py (compiled Triton and grouped_mm against the CPU oracle), with pytest if the
#    machine has it, else a note; 2. benchmarks/bench_gpu_training.py: expert-kernel times (Triton vs grouped
#    vs reference) and bf16 training tokens/s + MFU of a reduced-depth cluster-preset model. Under 8 minutes
#    on one H100/H200; every figure lands in OUT_DIR.
set -uo pipefail
OUT="${1:?usage: gpu_check.sh OUT_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" tests/kernels/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt"
  echo "test_cuda exit: ${PIPESTATUS[0]}" | tee -a "$OUT/test_cuda.txt"
else
  echo "pytest not installed here: tests/kernels/test_cuda.py not run" | tee "$OUT/test_cuda.txt"
fi
timeout 300 "$PY" benchmarks/bench_gpu_training.py "$OUT" 2>&1 | tee "$OUT/bench_gpu_training.txt"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_gpu_training.txt"
