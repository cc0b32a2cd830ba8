#!/usr/bin/env bash
# The main job on the embedded default. Until the benchmark zoo exists, it builds small
# checkpoints itself and inspects them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
./build/amalgam --version
