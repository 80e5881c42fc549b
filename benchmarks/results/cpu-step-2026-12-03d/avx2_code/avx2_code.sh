#!/bin/bash
# speed.py --cpu-step with only AVX2 code on this AVX-512 CPU: torch's kernels (ATEN_CPU_CAPABILITY),
# oneDNN and MKL limited to AVX2, NumPy's AVX-512 loops disabled, the C libraries built for haswell.
#   bash benchmarks/results/cpu-step-2026-12-03d/avx2_code/avx2_code.sh benchmarks/speed.py --cpu-step
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$(git rev-parse --show-toplevel)" && . .venv/bin/activate
export MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 TRITON_INTERPRET=0
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
export NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL"
export CC="$HERE/cc_haswell.sh"
python "$@"
