#!/usr/bin/env bash
# Safetensors header parsing against the tensor count: SafetensorsReader's open of a file
# with 5,000 to 50,000 tensors (median of RUNS), then `amalgam inspect` of the 50,000-tensor
# file as a user runs it (its table included). Linear in the count: 50,000 in under 0.5 s.
#
#   bench/header_parse.sh [RUNS]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMALGAM_BUILD_BENCH=ON -DAMALGAM_BUILD_TESTS=OFF >/dev/null
ninja -C build-bench header_parse amalgam >/dev/null
build-bench/header_parse --runs "$runs" 5000 10000 20000 50000
