#!/usr/bin/env bash
# The example model on an NVIDIA GPU: the in-process ceiling and the served figures, fp32 and
# fp16, batches of up to 256, concurrency up to 256, mfk serve and LitServe side by side, and
# the device memory used. Writes everything under OUT (default /tmp/mfk-gpu-bench).
#
#   benchmarks/gpu.sh                       # from the repository root, in a venv with a CUDA
#                                           # build of torch, modal-fastapi-kit[examples,dev]
#                                           # and benchmarks/requirements.txt installed
#   ROUNDS=2 SECONDS_PER_RUN=10 benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-/tmp/mfk-gpu-bench}
ROUNDS=${ROUNDS:-1}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CONCURRENCY=${CONCURRENCY:-1,16,64,256}
BATCH_SIZES=${BATCH_SIZES:-1,8,32,64,128,256}
export HF_HUB_OFFLINE=1 BENCH_MAX_BATCH_SIZE=${BENCH_MAX_BATCH_SIZE:-256}
mkdir -p "$OUT"

"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device: install a CUDA build of torch")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

for dtype in float32 float16; do
  mkdir -p "$OUT/$dtype"
  # Device memory, every half second, while this dtype's servers run.
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
    > "$OUT/$dtype/memory.csv" &
  sampler=$!
  BENCH_DTYPE=$dtype "$PYTHON" -m benchmarks.serving \
    --contenders mfk-tuned,litserve --concurrency "$CONCURRENCY" --batch-sizes "$BATCH_SIZES" \
    --rounds "$ROUNDS" --seconds "$SECONDS_PER_RUN" \
    --out-dir "$OUT/$dtype" --json "$OUT/$dtype/run.json" || status=$?
  kill "$sampler" 2>/dev/null || true
  echo "$dtype: peak device memory $(sort -n "$OUT/$dtype/memory.csv" | tail -1) MiB" \
    | tee -a "$OUT/summary.txt"
  [ "${status:-0}" = 0 ] || { echo "the $dtype run failed ($status)"; exit "$status"; }
done
echo "reports: $OUT/float32/performance.md $OUT/float16/performance.md"
