#!/usr/bin/env bash
# Training throughput of the zoo's model (fine-tuning and contrastive pretraining steps)
# against this machine's own SGEMM peak. Random weights and images: nothing to build first.
#
#   bench/train_step.sh [RUNS] [STEPS]    # median of RUNS runs of STEPS steps (default 5, 30)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
steps=${2:-30}
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMALGAM_BUILD_BENCH=ON -DAMALGAM_BUILD_TESTS=OFF >/dev/null
ninja -C build-bench train_step >/dev/null
build-bench/train_step --runs "$runs" --steps "$steps"
