#!/usr/bin/env bash
# GPU correctness check + full benchmark sweep, all results in one folder (a few minutes on an H100/H200),
# the console copied to OUT/log.txt (with everything else: 8 files, the most a lent machine sends back).
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py's options]
set -euo pipefail
cd "$(dirname "$0")/.."
name=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
out=${1:-benchmarks/results/${name}-$(date +%F)}
mkdir -p "$out"
PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$(pwd) python3 benchmarks/gpu_check.py --out "$out" --tune "${@:2}" \
    2>&1 | tee "$out/log.txt"
echo "results in $out"
