#!/usr/bin/env bash
# The GPU check, for a machine with CUDA torch and Triton but no network, Ray or LightGBM:
#   bash scripts/gpu_check.sh OUT_DIR [SCALE_UP_BUDGET_S]
# 1. tests/kernels/test_cuda.py (compiled Triton and grouped_mm against the CPU oracle), with pytest if the
#    machine has it, else a note; 2. benchmarks/bench_gpu_training.py: expert-kernel times (Triton vs grouped
#    vs reference) and bf16 training tokens/s + MFU of a reduced-depth cluster-preset model; 3. when
#    bench_out/gpu/plan.json exists (benchmarks/scale_up_check.py prepare), the larger-scale mixture check,
#    for SCALE_UP_BUDGET_S seconds (default: what is left of 9 minutes). Every part has its own time limit and its log in OUT_DIR,
#    so one failing part keeps the others' figures.
set -uo pipefail
OUT="${1:?usage: gpu_check.sh OUT_DIR [SCALE_UP_BUDGET_S]}"
BUDGET="${2:-}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 170 "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" tests/kernels/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt"
  echo "test_cuda exit: ${PIPESTATUS[0]}" | tee -a "$OUT/test_cuda.txt"
else
  echo "pytest not installed here: tests/kernels/test_cuda.py not run" | tee "$OUT/test_cuda.txt"
fi
# its synthetic token shards stay out of OUT_DIR: only the figures come back
WORK="$(mktemp -d)"
timeout 120 "$PY" benchmarks/bench_gpu_training.py "$WORK" 2>&1 | tee "$OUT/bench_gpu_training.txt"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_gpu_training.txt"
cp "$WORK"/*.json "$OUT"/ 2>/dev/null
if [ -f bench_out/gpu/plan.json ]; then
  # by default whatever is left of a 9-minute command, so the whole check fits one 10-minute device call
  [ -n "$BUDGET" ] || BUDGET=$((540 - SECONDS - 40))
  timeout $((BUDGET + 60)) "$PY" benchmarks/scale_up_check.py train bench_out/gpu/plan.json \
    --results "$OUT/scale_up.json" --budget-s "$BUDGET" 2>&1 | tee "$OUT/scale_up.txt"
  echo "scale_up exit: ${PIPESTATUS[0]}" | tee -a "$OUT/scale_up.txt"
fi
