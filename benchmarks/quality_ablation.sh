#!/usr/bin/env bash
# digits, GM-VQ (β = 1), 4 seeds: the k-means and σ_z² ablation of benchmarks/README.md
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/quality-ablation}
mkdir -p "$out"
run() { name=$1; shift; python benchmarks/quality.py --datasets digits --methods gmvq --seeds 4 --out "$out/$name.json" "$@" | tail -1 | sed "s/^/$name /"; }
run random_init
run kmeans_init --kmeans-init
run kmeans_sz2_0.03 --kmeans-init --sigma-z2 0.03
run kmeans_sz2_0.3 --kmeans-init --sigma-z2 0.3
run random_sz2_0.03 --sigma-z2 0.03
