#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one command for a borrowed machine (no Ray, no network there):
#   PYTHONPATH=src bash scripts/gpu_check.sh OUT_DIR [SCALE_UP_BUDGET_S]
# 1. the compiled Triton and grouped kernels against the CPU oracle (tests/kernels/test_cuda.py);
# 2. single-GPU bf16 training throughput and MFU (benchmarks/bench_gpu_training.py);
# 3. the larger-scale mixture check (benchmarks/scale_up_check.py), when bench_out/gpu/plan.json exists.
# Every part has its own time limit and writes its log under OUT_DIR, so one failure keeps the rest.
set -u -o pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [SCALE_UP_BUDGET_S]}
budget=${2:-280}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-src} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >>"$out/gpu.txt" 2>&1
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cuda.py 2>&1 | tee "$out/test_cuda.log" | tail -5
timeout 110 python3 benchmarks/bench_gpu_training.py "$out" --steps 30 2>&1 | tee "$out/gpu_training.log" | tail -8
if [ -f bench_out/gpu/plan.json ]; then
  timeout $((budget + 40)) python3 benchmarks/scale_up_check.py train bench_out/gpu/plan.json \
    --results "$out/scale_up.json" --budget-s "$budget" 2>&1 | tee "$out/scale_up.log" | tail -30
fi
