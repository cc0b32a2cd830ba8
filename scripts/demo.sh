#!/usr/bin/env bash
# The main job on the embedded default. Until the benchmark zoo exists (a later issue), it
# writes a small synthetic checkpoint family (a base and three fine-tunes) and merges it
# with every data-free method, from the example configs in examples/.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
amalgam=./build/amalgam

echo "== amalgam generate: a synthetic base and three BF16 fine-tunes"
$amalgam generate -o demo-out/family --models 3 --layers 4 --hidden 256 --intermediate 688 --vocab 2000 --force
$amalgam inspect demo-out/family/base | head -8

for method in linear task_arithmetic ties dare_linear dare_ties breadcrumbs breadcrumbs_ties slerp tsv; do
  echo "== amalgam merge examples/$method.yaml"
  $amalgam merge "examples/$method.yaml" -o "demo-out/merged-$method" --force
done

echo "== the merged checkpoints"
for d in demo-out/merged-*; do
  $amalgam inspect "$d" | head -1
done
