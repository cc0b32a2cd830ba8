#!/usr/bin/env bash
# The main job on the embedded default: merges a small synthetic checkpoint family (a base
# and three fine-tunes) with every data-free method from the example configs in examples/,
# then builds the embedded benchmark zoo (cached after the first run) and evaluates a
# fine-tune and the base on one of its tasks, and ends in the benchmark: `amalgam bench` runs
# every method on the zoo (hyperparameters chosen on validation; in-domain, unseen tasks,
# corruptions, sequential merging, number of tasks, cost) into report/report.md with charts.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
amalgam=./build/amalgam

# --force replaces only outputs that carry amalgam's marker (.amalgam-output); outputs this
# script wrote with an amalgam from before the marker are its own, and removed here.
remove_unmarked_demo_output() {  # dir, a file that shows the demo wrote it
  if [ -d "$1" ] && [ ! -e "$1/.amalgam-output" ] && [ -e "$1/$2" ]; then rm -rf "$1"; fi
}
remove_unmarked_demo_output demo-out/family base/config.json
for d in demo-out/merged-*; do remove_unmarked_demo_output "$d" amalgam_config.yaml; done
remove_unmarked_demo_output report report.json

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

echo "== amalgam zoo build: eight tasks, a pretrained base, zero-shot-like heads, eight fine-tunes (cached)"
$amalgam zoo build -o zoo

echo "== amalgam eval: the mnist fine-tune and the base, through the same head"
$amalgam eval zoo/finetuned/mnist --task zoo/data/mnist --head zoo/heads/mnist.safetensors -q
$amalgam eval zoo/base --task zoo/data/mnist --head zoo/heads/mnist.safetensors -q

echo "== amalgam bench: every method on the zoo, the papers' experiments -> report/report.md"
$amalgam bench zoo -o report --force
