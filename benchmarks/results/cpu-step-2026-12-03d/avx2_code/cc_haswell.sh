#!/bin/bash
# gcc with -march=native replaced by -march=haswell (AVX2 + FMA, no AVX-512): the C libraries an AVX2-only CPU would build
args=()
for a in "$@"; do [ "$a" = "-march=native" ] && args+=("-march=haswell") || args+=("$a"); done
exec gcc "${args[@]}"
