#!/usr/bin/env bash
# A merge on a machine whose cores are shared: the TSV merge of three 29 MB models (SVDs,
# many parallel steps) on an idle machine and beside a busy-loop process on one core, with
# the default thread count against 1 and 2 threads, and with OpenMP's passive waiting
# (OMP_WAIT_POLICY=passive: threads sleep at once between parallel steps instead of
# spinning a while first). Each timing is the median of RUNS runs (default 3); the ratio
# default / best is the number to watch (target: within 1.3x).
#
#   bench/shared_cores.sh [DATA_DIR]      (default bench-data/, about 120 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/bench_util.sh
DATA=${1:-bench-data}
RUNS=${RUNS:-3}
WAIT=

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
amalgam=$PWD/build/amalgam
fam=$DATA/shared-cores
if [ ! -d "$fam" ]; then
  $amalgam generate -o "$fam" --models 3 --layers 4 --hidden 512 --intermediate 1376 --vocab 2000 >/dev/null
fi
cat >"$DATA/shared-cores.yaml" <<YAML
merge_method: tsv
base_model: $fam/base
models:
  - model: $fam/model_1
  - model: $fam/model_2
  - model: $fam/model_3
YAML

time_merge() {  # label, extra arguments...
  local label=$1
  shift
  local t
  t=$(for _ in $(seq "$RUNS"); do
    fresh_output "$DATA/shared-cores-out"
    seconds_of env $WAIT "$amalgam" merge "$DATA/shared-cores.yaml" -o "$DATA/shared-cores-out" -q --no-audit "$@"
  done | median)
  echo "$label $t"
}

measure() {  # condition
  local d one two passive
  WAIT=
  d=$(time_merge default | cut -d' ' -f2)
  one=$(time_merge threads1 --threads 1 | cut -d' ' -f2)
  two=$(time_merge threads2 --threads 2 | cut -d' ' -f2)
  WAIT=OMP_WAIT_POLICY=passive
  passive=$(time_merge passive | cut -d' ' -f2)
  awk -v c="$1" -v d="$d" -v a="$one" -v b="$two" -v p="$passive" 'BEGIN {
    best = a < b ? a : b
    printf "| %s | %.2f s | %.2f s | %.2f s | %.2fx | %.2f s |\n", c, d, a, b, d / best, p }'
}

echo "| machine | default threads | --threads 1 | --threads 2 | default / best | default, passive waiting |"
echo "|---|---|---|---|---|---|"
measure idle
bash -c 'while :; do :; done' &
busy=$!
trap 'kill $busy 2>/dev/null' EXIT
measure "beside a busy loop"
