#!/usr/bin/env bash
# compiled GM-VQ's step (speed.py --cpu-step --only gmvq_kernels:compiled), this checkout against OLD
# (a checkout of 037da13, where torch.compile traced the reference), each in a process of its own,
# alternating, three rounds; with glibc's default allocator and with it told to keep freed memory.
# Usage: bash ab_compiled.sh OLD
set -euo pipefail
OLD=$1; NEW=$(cd "$(dirname "$0")/../../.." && pwd)
for malloc in default keep; do
  for round in 1 2 3; do
    for tree in "$OLD" "$NEW"; do
      if [ $malloc = keep ]; then export MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456;
      else unset MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_; fi
      name=$([ "$tree" = "$OLD" ] && echo old || echo new)
      PYTHONPATH=$tree python "$tree/benchmarks/speed.py" --cpu-step --only gmvq_kernels:compiled 2>/dev/null \
        | python -c "import sys, json; r = json.loads(sys.stdin.readlines()[-1]); print('$malloc round $round $name: compiled median %.2f ms, min %.2f, %d faults/step' % (r['ms_median'], r['ms_min'], r['page_faults_per_step']))"
    done
  done
done
