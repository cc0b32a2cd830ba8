#!/usr/bin/env bash
# RegMean and RegMean++ on ViT-B/32-shaped checkpoints: 8 candidates (random base plus
# seeded perturbations, BF16), 256 calibration examples each (random 224x224 RGB images).
#
#   bench/regmean.sh [WORKDIR]     # about 15 minutes on 2 cores, 8 GB of disk in WORKDIR
#
# 1. In process (build-bench/regmean): forward vs forward + Gram collection (median of 3),
#    Gram GFLOP/s against the machine's SGEMM peak, closed-form and solve time per layer kind.
# 2. The CLI as a user runs it, with wall time, CPU time and peak RSS of each step:
#    `amalgam stats` per candidate, `amalgam merge` with regmean (from the stats) and with
#    regmean_plusplus (from the data).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DAMALGAM_BUILD_BENCH=ON -DAMALGAM_BUILD_TESTS=OFF >/dev/null
ninja -C build-bench regmean amalgam >/dev/null
bin=build-bench/amalgam

echo "== in process: statistics and closed form (ViT-B/32 shape)"
build-bench/regmean --examples 64 --runs 3 | tee "$work/inprocess.json"

echo "== writing 8 candidates and their tasks into $work"
[ -f "$work/models/task7/model.safetensors" ] || build-bench/regmean --write "$work" --tasks 8 --examples 256

measure() {  # measure NAME COMMAND...: appends {name, wall, cpu, rss} to timings.jsonl
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" "$@"
  read -r wall user sys rss <"$work/time.txt"
  echo "{\"step\": \"$name\", \"wall_s\": $wall, \"cpu_s\": $(awk "BEGIN {print $user + $sys}"), \"peak_rss_mb\": $((rss / 1024))}" |
    tee -a "$work/timings.jsonl"
}
rm -f "$work/timings.jsonl"
mkdir -p "$work/stats"
for t in 0 1 2 3 4 5 6 7; do
  measure "stats task$t" $bin stats "$work/models/task$t" --data "$work/tasks/task$t" --examples 256 --force -q \
    -o "$work/stats/task$t.safetensors"
done
{
  echo "merge_method: regmean"; echo "parameters: {alpha: 0.95}"; echo "models:"
  for t in 0 1 2 3 4 5 6 7; do echo "  - {model: $work/models/task$t, stats: $work/stats/task$t.safetensors}"; done
} >"$work/regmean.yaml"
{
  echo "merge_method: regmean_plusplus"; echo "parameters: {alpha: 0.95, examples: 256}"; echo "models:"
  for t in 0 1 2 3 4 5 6 7; do echo "  - {model: $work/models/task$t, data: $work/tasks/task$t}"; done
} >"$work/regmean_plusplus.yaml"
measure "merge regmean (from stats)" $bin merge "$work/regmean.yaml" -o "$work/out-regmean" --force -q
measure "merge regmean_plusplus (from data)" $bin merge "$work/regmean_plusplus.yaml" -o "$work/out-regmean_plusplus" --force -q
