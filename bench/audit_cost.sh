#!/usr/bin/env bash
# What the merge audit (merge_report.json) costs: each merge timed with the audit (the
# default) and with --no-audit, alternating, median of RUNS runs (default 5) each: wall
# time, and the CPU time the audit adds against the merge's whole CPU time.
#   - data-free methods on 8 generated BF16 fine-tunes of a small decoder (337 MB each);
#   - RegMean and RegMean++ on a built zoo (256 calibration examples per task), if ZOO is given.
#
#   bench/audit_cost.sh [DATA_DIR] [ZOO]     (DATA_DIR default bench-data/, about 2.5 GB of disk)
#   METHODS="linear ties tsv" bench/audit_cost.sh    (tsv: about 4 minutes a merge on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-bench-data}
ZOO=${2:-}
RUNS=${RUNS:-5}
METHODS=${METHODS:-linear task_arithmetic ties}
amalgam=${AMALGAM:-$PWD/build/amalgam}
source bench/bench_util.sh

fam=$DATA/audit-family
if [ ! -d "$fam" ]; then
  echo "== generating 8 fine-tunes and a base (once)" >&2
  $amalgam generate -o "$fam" --models 8 --layers 8 --hidden 1024 --intermediate 2816 --vocab 32000
fi

data_free_config() {  # method
  echo "merge_method: $1"
  [ "$1" != linear ] && echo "base_model: $fam/base"
  echo "models:"
  for i in $(seq 1 8); do
    echo "  - model: $fam/model_$i"
    case $1 in
      ties) echo "    parameters: {weight: 1.0, density: 0.2}" ;;
      tsv) ;;
      *) echo "    parameters: {weight: 1.0}" ;;
    esac
  done
  case $1 in
    task_arithmetic | ties) echo "parameters: {lambda: 0.3}" ;;
  esac
  echo "dtype: bfloat16"
}

zoo_config() {  # method
  echo "merge_method: $1"
  echo "base_model: $ZOO/base"
  echo "parameters: {alpha: 0.95, examples: 256}"
  echo "models:"
  for t in mnist fashion letters digits8 shapes gratings count textures; do
    echo "  - model: $ZOO/finetuned/$t"
    echo "    data: $ZOO/data/$t"
  done
}

# Prints the medians "wall_with wall_without user_with user_without cpu_without" in
# seconds (cpu: user + system), the two variants alternating (each first in every other
# pair) so that drift in the machine's speed falls on both. Each run writes a fresh output
# directory: the previous one is deleted and synced first, untimed (see fresh_output).
measure() {  # config
  local with=() without=() user_with=() user_without=() cpu_without=() w u s
  for run in $(seq "$RUNS"); do
    for variant in $([ $((run % 2)) = 1 ] && echo "with without" || echo "without with"); do
      fresh_output "$DATA/audit-out"
      if [ "$variant" = with ]; then
        read -r w u s < <(wall_and_cpu_of $amalgam merge "$1" -o "$DATA/audit-out" --force -q)
        with+=("$w") user_with+=("$u")
      else
        read -r w u s < <(wall_and_cpu_of $amalgam merge "$1" -o "$DATA/audit-out" --force -q --no-audit)
        without+=("$w") user_without+=("$u") cpu_without+=("$(awk -v u="$u" -v s="$s" 'BEGIN { print u + s }')")
      fi
    done
  done
  for list in with without user_with user_without cpu_without; do
    local -n values=$list
    printf '%s ' "$(printf '%s\n' "${values[@]}" | median)"
  done
  echo
}

# Wall time, and the CPU time the audit adds: it adds only user-space work (the same bytes
# are read and written), so its share is the added user time over the whole CPU time of the
# merge without it. On a shared VM the kernel's time for the reads and writes varies from
# run to run by more than the audit costs, which the wall times show.
printf "%-22s %9s %12s %9s %11s %9s\n" method audit_s no_audit_s overhead added_cpu_s of_cpu
row() {  # method config
  read -r w n uw un cn < <(measure "$2")
  awk -v m="$1" -v w="$w" -v n="$n" -v uw="$uw" -v un="$un" -v cn="$cn" 'BEGIN {
    printf "%-22s %9.2f %12.2f %8.1f%% %11.2f %8.1f%%\n", m, w, n, 100 * (w - n) / n, uw - un, 100 * (uw - un) / cn }'
}
for m in $METHODS; do
  data_free_config "$m" >"$DATA/audit-$m.yaml"
  row "$m" "$DATA/audit-$m.yaml"
done
if [ -n "$ZOO" ]; then
  for m in regmean regmean_plusplus; do
    zoo_config "$m" >"$DATA/audit-$m.yaml"
    row "$m (zoo)" "$DATA/audit-$m.yaml"
  done
fi
rm -rf "$DATA/audit-out"
